/*
 * The benchmarks' load driver in C (issue 27): it measures the server, not
 * itself. benchmarks/broadcast.py builds it with the system C compiler, as
 * it builds the C reference server, starts a server, runs this program
 * against it and reads the one JSON object it prints.
 *
 *     cc -O2 -Wall -Wextra -o c_driver c_driver.c
 *     ./c_driver --port PORT --protocol native --clients 100 --senders 10 --window 20 --duration 3
 *
 * One process, one thread, one epoll set, non-blocking sockets to
 * 127.0.0.1 only. It speaks chatcore's native protocol (also the C
 * reference's), IRC (NICK/USER, JOIN, PRIVMSG) and the web plugin's JSON
 * over WebSocket (masked client frames).
 *
 * Every chat line a sender writes carries, at the end of its text, its
 * sender, its sequence number and the time it was made:
 *
 *     xxxxxxxxxxxxxxxxxxxx 00001 0000000042 0000012345678901
 *     padding              sender sequence  monotonic microseconds
 *
 * The text is as long as the Python driver's (a native delivery, "<s00001> "
 * and a newline included, is --line-size bytes: 64), so the two drivers'
 * figures compare. Every delivery is parsed: its latency goes into a
 * histogram (1/64 relative precision: p50, p99, p99.9, max), and its
 * sequence is checked per receiver and sender (the last number seen and a
 * 64-bit map of the ones before it tell a duplicate from a late line). A
 * chat line whose text is not exactly what a sender writes, whose nick is
 * not its sender's, or a line that is neither chat nor a server notice is
 * corrupted. Lost = what each sender sent times its room's other members,
 * less the distinct lines that arrived, after a drain.
 *
 * Scenarios (--mode):
 *   flow     clients connect (paced), optionally join rooms, sync twice (a
 *            ping round trip each, so that no set-up traffic is left), then
 *            senders send for --duration: as fast as a window of W
 *            unacknowledged lines allows (acknowledged by a monitor, another
 *            member of the sender's room that receives it), or paced at
 *            --rate lines per second in all; then a drain.
 *   connect  --clients connects started at once; time until each is
 *            welcomed (native: its first line; IRC: 001; WebSocket: the
 *            welcome frame).
 *   idle     --clients clients connected (paced), synced, held: the
 *            server's resident memory before and after, and each
 *            connection's start-up time.
 *
 * Rooms (--rooms R, --rooms-per-client K): client c is in rooms
 * (c + k * P) mod R for k < K, P a stride prime to R near R / K, so every
 * room has clients * K / R members; it talks in the room it joined last.
 * Without --rooms every client is in the server's default room (native and
 * WebSocket) or in #bench (IRC).
 *
 * Everything is bounded: the set-up by --setup-timeout, the sending by
 * --duration, the drain by --drain-timeout, the whole run by their sum.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define TAIL 34          /* " SSSSS QQQQQQQQQQ TTTTTTTTTTTTTTTT" */
#define NICK_PREFIX 9    /* "<s00001> " */
#define RECV_SIZE 262144
#define MAX_PART 65536   /* an unfinished line or frame kept between reads */
#define MAX_BATCH 100    /* lines a paced sender makes at once */
#define WINDOW_TIMEOUT 1000000 /* us without acknowledgements before a window reopens */
#define HIST (128 + 64 * 40)
#define SYNC_TOKEN "cdsync"

enum protocol { NATIVE, IRC, WS };
enum mode { FLOW, CONNECT, IDLE };

typedef struct {
    uint32_t sender_plus1; /* 0: empty slot */
    uint32_t last;         /* highest sequence seen */
    uint64_t seen;         /* bit i: last - i was seen */
} pair;

typedef struct {
    int fd;
    int index;
    int connected;  /* the TCP connect completed */
    int upgraded;   /* WebSocket: the 101 was read */
    int welcomed;   /* native: first line; IRC: 001; WebSocket: welcome frame */
    int pongs;      /* sync round trips answered */
    int pinged;     /* sync round trips asked */
    int dead;
    int want_out;   /* polling for EPOLLOUT */
    int64_t started_us, welcomed_us;
    char *part;
    size_t part_len;
    char *out;
    size_t out_len, out_off, out_cap;
    pair *pairs;
    uint32_t pair_mask;
} conn;

typedef struct {
    uint64_t sent, unique, duplicated, reordered, corrupted;
    uint64_t acked;
    int64_t progress_us;
    uint64_t stalls;
    int room;     /* the room it talks in */
    int monitor;  /* the client whose receipts acknowledge its lines */
    int audience; /* members of its room but itself */
} sender;

/* -- options -------------------------------------------------------------- */

static int port, clients = 10, senders_count, window_size, rooms, rooms_per_client = 1;
static int line_size = 64, server_pid, inflight = 50;
static enum protocol proto = NATIVE;
static enum mode run_mode = FLOW;
static double duration = 3.0, rate, connect_rate, setup_timeout = 60.0, drain_timeout = 5.0;
static double settle = 0.5;
static int show_notices; /* --show-notices N: the first N notices after the set-up, to stderr */

/* -- state ---------------------------------------------------------------- */

static conn *conns;
static sender *senders;
static int *room_members;  /* members per room */
static int **room_list;    /* the members of each room */
static int epfd, timer_fd = -1;
static int text_len;       /* the chat text a sender writes */
static char pad[4096];
static char recv_buffer[MAX_PART + RECV_SIZE];
static uint64_t hist[HIST];
static uint64_t latency_max, latency_count;
static uint64_t deliveries, notices, corrupted_unattributed, gaps, connect_errors, closed_early;
static int opened, connected_count, welcomed_count, synced_round, synced_count, introduced_count;
static int sending; /* 1 while the senders send */
static int64_t now;
static uint32_t mask_state = 2463534242u;

static int64_t clock_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void fail(const char *format, ...) {
    char message[512];
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof message, format, args);
    va_end(args);
    for (char *p = message; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 32) *p = ' ';
    printf("{\"error\": \"%s\"}\n", message);
    fflush(stdout);
    exit(1);
}

static void *must(void *p) {
    if (!p) fail("out of memory");
    return p;
}

/* -- histogram -------------------------------------------------------------- */

static int bucket(uint64_t v) {
    if (v < 128) return (int)v;
    int e = 63 - __builtin_clzll(v); /* 7 or more */
    int index = 128 + (e - 7) * 64 + (int)((v >> (e - 6)) & 63);
    return index < HIST ? index : HIST - 1;
}

static double bucket_us(int index) {
    if (index < 128) return index;
    int e = (index - 128) / 64 + 7, sub = (index - 128) % 64;
    double width = (double)(1ull << (e - 6));
    return (64 + sub) * width + width / 2; /* the middle of the bucket */
}

static double percentile_ms(double fraction) {
    if (!latency_count) return -1;
    uint64_t rank = (uint64_t)(fraction * (double)latency_count);
    if (rank >= latency_count) rank = latency_count - 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST; i++) {
        seen += hist[i];
        if (seen > rank) {
            double value = bucket_us(i);
            return (value > (double)latency_max ? (double)latency_max : value) / 1000.0;
        }
    }
    return (double)latency_max / 1000.0;
}

/* -- output buffers --------------------------------------------------------- */

static void out_reserve(conn *c, size_t more) {
    if (c->out_off && c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (c->out_len + more <= c->out_cap) return;
    if (c->out_off) { /* move the unsent rest to the front first */
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
        if (c->out_len + more <= c->out_cap) return;
    }
    size_t cap = c->out_cap ? c->out_cap : 512;
    while (cap < c->out_len + more) cap *= 2;
    c->out = must(realloc(c->out, cap));
    c->out_cap = cap;
}

static void out_add(conn *c, const char *data, size_t len) {
    out_reserve(c, len);
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
}

static void watch(conn *c, int out) {
    if (c->want_out == out) return;
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.u32 = (uint32_t)c->index};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = out;
}

static void kill_conn(conn *c) {
    if (c->dead) return;
    c->dead = 1;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->welcomed && run_mode != CONNECT) closed_early++;
}

static void flush(conn *c) {
    while (!c->dead && c->connected && c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c->out_off += (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            watch(c, 1);
            return;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            kill_conn(c);
            return;
        }
    }
    if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (!c->dead) watch(c, 0);
}

/* A WebSocket text frame as a client must send it: masked. */
static void ws_frame(conn *c, const char *payload, size_t len) {
    unsigned char header[8];
    size_t at = 0;
    header[at++] = 0x81;
    if (len < 126) {
        header[at++] = (unsigned char)(0x80 | len);
    } else {
        header[at++] = 0x80 | 126;
        header[at++] = (unsigned char)(len >> 8);
        header[at++] = (unsigned char)len;
    }
    mask_state ^= mask_state << 13; /* xorshift: a fresh mask per frame */
    mask_state ^= mask_state >> 17;
    mask_state ^= mask_state << 5;
    unsigned char mask[4];
    memcpy(mask, &mask_state, 4);
    out_reserve(c, at + 4 + len);
    memcpy(c->out + c->out_len, header, at);
    memcpy(c->out + c->out_len + at, mask, 4);
    char *body = c->out + c->out_len + at + 4;
    for (size_t i = 0; i < len; i++) body[i] = (char)(payload[i] ^ mask[i & 3]);
    c->out_len += at + 4 + len;
}

/* A command line (native "/join r0001") in the client's protocol. */
static void command(conn *c, const char *text) {
    char line[256];
    if (proto == WS) {
        int n = snprintf(line, sizeof line, "{\"type\":\"line\",\"text\":\"%s\"}", text);
        ws_frame(c, line, (size_t)n);
    } else {
        int n = snprintf(line, sizeof line, "%s\n", text);
        out_add(c, line, (size_t)n);
    }
}

static void room_name(int room, char *name, size_t size) {
    snprintf(name, size, "%sr%04d", proto == IRC ? "#" : "", room);
}

static int room_of(int client, int k);

static void sync_ping(conn *c) {
    c->pinged++;
    if (proto == IRC) out_add(c, "PING :" SYNC_TOKEN "\r\n", 6 + sizeof SYNC_TOKEN - 1 + 2);
    else command(c, "/ping");
    flush(c);
}

static void enter(conn *c);

/* What a client says once connected: the WebSocket upgrade, IRC's
 * registration; then (IRC: once registered) its name, rooms and first sync. */
static void introduce(conn *c) {
    char text[128];
    if (proto == WS) {
        char request[256];
        int n = snprintf(request, sizeof request,
                         "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         "Sec-WebSocket-Key: Y2hhdGNvcmUtY2RyaXZlcg==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                         port);
        out_add(c, request, (size_t)n);
    }
    if (proto == IRC) {
        int n = snprintf(text, sizeof text, "NICK %c%05d\r\nUSER b%05d 0 * :bench\r\n", c->index < senders_count ? 's' : 'c',
                         c->index, c->index);
        out_add(c, text, (size_t)n);
    }
    if (run_mode == CONNECT || proto == IRC) { /* IRC servers refuse JOIN before 001 (InspIRCd says 451) */
        flush(c);
        return;
    }
    enter(c);
}

/* A client's name, rooms and first sync ping. */
static void enter(conn *c) {
    char text[128], name[32];
    if (proto != IRC && c->index < senders_count) {
        snprintf(text, sizeof text, "/nick s%05d", c->index);
        command(c, text);
    }
    if (rooms) {
        for (int k = 0; k < rooms_per_client; k++) {
            room_name(room_of(c->index, k), name, sizeof name);
            snprintf(text, sizeof text, proto == IRC ? "JOIN %s\r\n" : "/join %s", name);
            if (proto == IRC) out_add(c, text, strlen(text));
            else command(c, text);
        }
        if (proto != IRC) command(c, "/part lobby");
    } else if (proto == IRC) {
        out_add(c, "JOIN #bench\r\n", 13);
    }
    sync_ping(c);
}

/* -- rooms ------------------------------------------------------------------ */

static int stride;

static int gcd(int a, int b) { return b ? gcd(b, a % b) : a; }

static int room_of(int client, int k) { return (int)(((long)client + (long)k * stride) % rooms); }

static void plan_rooms(void) {
    senders = must(calloc((size_t)(senders_count ? senders_count : 1), sizeof *senders));
    int count = rooms ? rooms : 1;
    room_members = must(calloc((size_t)count, sizeof *room_members));
    room_list = must(calloc((size_t)count, sizeof *room_list));
    if (rooms) {
        stride = rooms / rooms_per_client + 1;
        while (gcd(stride, rooms) != 1) stride++;
        for (int c = 0; c < clients; c++)
            for (int k = 0; k < rooms_per_client; k++) room_members[room_of(c, k)]++;
    } else {
        room_members[0] = clients;
    }
    for (int r = 0; r < count; r++) {
        room_list[r] = must(calloc((size_t)room_members[r] + 1, sizeof(int)));
        room_members[r] = 0;
    }
    for (int c = 0; c < clients; c++)
        for (int k = 0; k < (rooms ? rooms_per_client : 1); k++) {
            int r = rooms ? room_of(c, k) : 0;
            room_list[r][room_members[r]++] = c;
        }
    for (int s = 0; s < senders_count; s++) {
        int r = rooms ? room_of(s, rooms_per_client - 1) : 0;
        senders[s].room = r;
        senders[s].audience = room_members[r] - 1;
        senders[s].monitor = room_list[r][0] != s ? room_list[r][0] : room_list[r][1];
    }
}

/* How many senders a client can hear from: the size of its sequence table. */
static int peers_of(int client) {
    long peers = 0;
    for (int k = 0; k < (rooms ? rooms_per_client : 1); k++) peers += room_members[rooms ? room_of(client, k) : 0];
    return (int)(peers < senders_count ? peers : senders_count);
}

/* -- receiving -------------------------------------------------------------- */

static int digits(const char *p, int n, uint64_t *value) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) {
        unsigned d = (unsigned char)p[i] - '0';
        if (d > 9) return 0;
        v = v * 10 + d;
    }
    *value = v;
    return 1;
}

/* Eight ASCII digits at once (SWAR): 0 if one of them is not a digit. */
static int digits8(const char *p, uint64_t *value) {
    uint64_t v;
    memcpy(&v, p, 8); /* little-endian: the first digit is the lowest byte */
    if ((v & 0xf0f0f0f0f0f0f0f0ull) != 0x3030303030303030ull ||
        ((v + 0x0606060606060606ull) & 0xf0f0f0f0f0f0f0f0ull) != 0x3030303030303030ull)
        return 0;
    v = (v & 0x0f0f0f0f0f0f0f0full) * 2561 >> 8;
    v = (v & 0x00ff00ff00ff00ffull) * 6553601 >> 16;
    *value = (v & 0x0000ffff0000ffffull) * 42949672960001ull >> 32;
    return 1;
}

/* The sequence (10 digits) and the time stamp (16) of a line's tail. */
static int tail_numbers(const char *tail, uint64_t *seq, uint64_t *stamp) {
    uint64_t high, low, a, b;
    if (!digits(tail + 7, 2, &high) || !digits8(tail + 9, &low) || !digits8(tail + 18, &a) || !digits8(tail + 26, &b))
        return 0;
    *seq = high * 100000000ull + low;
    *stamp = a * 100000000ull + b;
    return 1;
}

static void corrupted(const char *text, size_t len) {
    uint64_t s;
    if (len >= TAIL && text[len - TAIL] == ' ' && digits(text + len - TAIL + 1, 5, &s) && s < (uint64_t)senders_count)
        senders[s].corrupted++;
    else
        corrupted_unattributed++;
}

/* One chat delivery to client c: `nick` is the sender's five digits as its
 * name shows them, `text` what it said. */
static void chat(conn *c, const char *nick, const char *text, size_t len) {
    uint64_t s, seq, stamp;
    if (len != (size_t)text_len || memcmp(text, pad, (size_t)text_len - TAIL) != 0 || text[len - TAIL] != ' ' ||
        text[len - 28] != ' ' || text[len - 17] != ' ' || !digits(text + len - 33, 5, &s) ||
        !tail_numbers(text + len - TAIL, &seq, &stamp) || s >= (uint64_t)senders_count ||
        memcmp(nick, text + len - 33, 5) != 0 || seq == 0) {
        corrupted(text, len);
        return;
    }
    if (!c->pairs) { /* from a sender it shares no room with */
        corrupted(text, len);
        return;
    }
    deliveries++;
    uint64_t latency = now > (int64_t)stamp ? (uint64_t)(now - (int64_t)stamp) : 0;
    hist[bucket(latency)]++;
    latency_count++;
    if (latency > latency_max) latency_max = latency;
    sender *from = &senders[s];
    if (c->index == from->monitor && seq > from->acked) from->acked = seq;
    uint32_t key = (uint32_t)s + 1, slot = (key * 2654435761u) & c->pair_mask;
    while (c->pairs[slot].sender_plus1 && c->pairs[slot].sender_plus1 != key) slot = (slot + 1) & c->pair_mask;
    pair *p = &c->pairs[slot];
    if (!p->sender_plus1) {
        p->sender_plus1 = key;
        p->last = (uint32_t)seq;
        p->seen = 1;
        gaps += seq - 1;
        from->unique++;
    } else if (seq > p->last) {
        uint64_t shift = seq - p->last;
        p->seen = shift >= 64 ? 1 : (p->seen << shift) | 1;
        gaps += shift - 1;
        p->last = (uint32_t)seq;
        from->unique++;
    } else {
        uint64_t back = p->last - seq;
        if (back < 64 && (p->seen >> back) & 1) {
            from->duplicated++;
        } else {
            if (back < 64) p->seen |= 1ull << back;
            from->reordered++;
            from->unique++;
        }
    }
}

static void welcome(conn *c) {
    if (c->welcomed) return;
    c->welcomed = 1;
    c->welcomed_us = now;
    welcomed_count++;
}

/* A server line that is not chat: counted, and shown while debugging. */
static void notice(conn *c, const char *line, size_t len) {
    notices++;
    if (show_notices > 0 && synced_round >= 2) {
        show_notices--;
        fprintf(stderr, "client %d: %.*s\n", c->index, (int)(len < 300 ? len : 300), line);
    }
}

static void pong(conn *c) {
    c->pongs++;
    if (c->pongs == 1) introduced_count++;
    if (c->pongs == synced_round + 1) synced_count++;
}

static void native_line(conn *c, const char *line, size_t len) {
    welcome(c);
    if (len && line[0] == '[') { /* a room's label, for a client in several */
        const char *end = memchr(line, ']', len);
        if (!end || (size_t)(end - line) + 2 > len || end[1] != ' ') {
            corrupted(line, len);
            return;
        }
        len -= (size_t)(end - line) + 2;
        line = end + 2;
    }
    if (len > NICK_PREFIX && line[0] == '<') {
        if (line[1] != 's' || line[7] != '>' || line[8] != ' ') {
            corrupted(line, len);
            return;
        }
        chat(c, line + 2, line + NICK_PREFIX, len - NICK_PREFIX);
    } else if (len >= 2 && (line[0] == '*' || line[0] == '!' || line[0] == '#' || line[0] == '-')) {
        notice(c, line, len);
        if (len == 6 && memcmp(line, "* pong", 6) == 0) pong(c);
    } else {
        corrupted(line, len);
    }
}

static void irc_line(conn *c, const char *line, size_t len) {
    if (len >= 5 && memcmp(line, "PING ", 5) == 0) {
        out_add(c, "PONG ", 5);
        out_add(c, line + 5, len - 5);
        out_add(c, "\r\n", 2);
        flush(c);
        return;
    }
    const char *space = memchr(line, ' ', len);
    if (line[0] == ':' && space && (size_t)(line + len - space) > 9 && memcmp(space, " PRIVMSG ", 9) == 0) {
        const char *colon = memmem(space + 9, (size_t)(line + len - space - 9), " :", 2);
        if (!colon || len < 8 || line[1] != 's' || line[7] != '!') {
            corrupted(line, len);
            return;
        }
        chat(c, line + 2, colon + 2, (size_t)(line + len - colon - 2));
        return;
    }
    notice(c, line, len);
    if (space && (size_t)(line + len - space) >= 5 && memcmp(space, " 433 ", 5) == 0 && !c->welcomed)
        fail("client %d: the server says its IRC nick is in use: %.100s", c->index, line);
    if (space && (size_t)(line + len - space) >= 5 && memcmp(space, " 001 ", 5) == 0 && !c->welcomed) {
        welcome(c);
        if (run_mode != CONNECT) enter(c);
    }
    if (space && len > sizeof SYNC_TOKEN && memcmp(space, " PONG ", 6) == 0 &&
        memcmp(line + len - (sizeof SYNC_TOKEN - 1), SYNC_TOKEN, sizeof SYNC_TOKEN - 1) == 0)
        pong(c);
}

static const char *find(const char *data, size_t len, const char *what) { return memmem(data, len, what, strlen(what)); }

static void ws_message(conn *c, const char *json, size_t len) {
    welcome(c);
    static const char chat_type[] = "{\"type\":\"chat\",";
    if (len > sizeof chat_type && memcmp(json, chat_type, sizeof chat_type - 1) == 0) {
        const char *nick = find(json, len, "\"nick\":\"");
        const char *text = find(json, len, "\"text\":\"");
        const char *end = text ? memchr(text + 8, '"', (size_t)(json + len - text - 8)) : NULL;
        if (!nick || !end || json + len - nick < 14 || nick[8] != 's') {
            corrupted(json, len);
            return;
        }
        chat(c, nick + 9, text + 8, (size_t)(end - text - 8));
        return;
    }
    notice(c, json, len);
    if (find(json, len, "\"text\":\"pong\"")) pong(c);
}

/* Handles what is in [data, data + len); returns how many bytes it used
 * (the rest is an unfinished line or frame). */
static size_t consume(conn *c, char *data, size_t len) {
    char *p = data, *end = data + len;
    if (proto == WS && !c->upgraded) {
        char *blank = memmem(p, len, "\r\n\r\n", 4);
        if (!blank) return 0;
        if (len < 13 || memcmp(p, "HTTP/1.1 101 ", 13) != 0) {
            fail("WebSocket upgrade refused: %.60s", p);
        }
        c->upgraded = 1;
        p = blank + 4;
    }
    if (proto == WS) {
        while (end - p >= 2) {
            unsigned char b0 = (unsigned char)p[0], b1 = (unsigned char)p[1];
            size_t head = 2, size = b1 & 0x7f;
            if (size == 126) {
                if (end - p < 4) break;
                size = ((size_t)(unsigned char)p[2] << 8) | (unsigned char)p[3];
                head = 4;
            } else if (size == 127) {
                if (end - p < 10) break;
                size = 0;
                for (int i = 2; i < 10; i++) size = (size << 8) | (unsigned char)p[i];
                head = 10;
            }
            if (b1 & 0x80) head += 4; /* a server must not mask; skip a mask if one came */
            if (size > MAX_PART) fail("a WebSocket frame of %zu bytes", size);
            if ((size_t)(end - p) < head + size) break;
            int opcode = b0 & 0x0f;
            if (opcode == 1 && (b0 & 0x80)) ws_message(c, p + head, size);
            else if (opcode == 9) { /* ping: answer with a masked pong */
                out_reserve(c, 6 + size);
                unsigned char frame[6] = {0x8a, (unsigned char)(0x80 | size), 0, 0, 0, 0};
                out_add(c, (char *)frame, 6);
                out_add(c, p + head, size);
                flush(c);
            } else if (opcode == 8) {
                kill_conn(c);
                return (size_t)(end - data);
            } else if (opcode != 10) {
                corrupted(p + head, size);
            }
            p += head + size;
        }
        return (size_t)(p - data);
    }
    for (;;) {
        char *newline = memchr(p, '\n', (size_t)(end - p));
        if (!newline) break;
        size_t n = (size_t)(newline - p);
        if (n && p[n - 1] == '\r') n--;
        if (proto == IRC) irc_line(c, p, n);
        else native_line(c, p, n);
        p = newline + 1;
    }
    return (size_t)(p - data);
}

static void readable(conn *c) {
    memcpy(recv_buffer, c->part, c->part_len);
    ssize_t got = recv(c->fd, recv_buffer + c->part_len, RECV_SIZE, 0);
    if (got <= 0) {
        if (got < 0 && (errno == EAGAIN || errno == EINTR)) return;
        kill_conn(c);
        return;
    }
    now = clock_us();
    size_t len = c->part_len + (size_t)got;
    size_t used = consume(c, recv_buffer, len);
    if (c->dead) return;
    c->part_len = len - used;
    if (c->part_len > MAX_PART) fail("client %d: a line of more than %d bytes", c->index, MAX_PART);
    if (c->part_len) {
        if (!c->part) c->part = must(malloc(MAX_PART));
        memcpy(c->part, recv_buffer + used, c->part_len);
    }
}

/* -- sending ---------------------------------------------------------------- */

static void put_digits(char *p, int n, uint64_t value) {
    for (int i = n - 1; i >= 0; i--) {
        p[i] = (char)('0' + value % 10);
        value /= 10;
    }
}

/* `count` chat lines from sender s, in its protocol. */
static void make_lines(int s, int count) {
    conn *c = &conns[s];
    sender *me = &senders[s];
    char text[4096 + 64], frame[4200], room[32];
    int64_t stamp = clock_us();
    room_name(me->room, room, sizeof room);
    memcpy(text, pad, (size_t)text_len - TAIL);
    char *tail = text + text_len - TAIL;
    tail[0] = ' ';
    put_digits(tail + 1, 5, (uint64_t)s);
    tail[6] = ' ';
    tail[17] = ' ';
    put_digits(tail + 18, 16, (uint64_t)stamp);
    for (int i = 0; i < count; i++) {
        put_digits(tail + 7, 10, ++me->sent);
        if (proto == NATIVE) {
            out_reserve(c, (size_t)text_len + 1);
            memcpy(c->out + c->out_len, text, (size_t)text_len);
            c->out[c->out_len + (size_t)text_len] = '\n';
            c->out_len += (size_t)text_len + 1;
        } else if (proto == IRC) {
            int n = snprintf(frame, sizeof frame, "PRIVMSG %s :%.*s\r\n", rooms ? room : "#bench", text_len, text);
            out_add(c, frame, (size_t)n);
        } else {
            int n = snprintf(frame, sizeof frame, "{\"type\":\"line\",\"text\":\"%.*s\"}", text_len, text);
            ws_frame(c, frame, (size_t)n);
        }
    }
}

static void send_turn(int64_t started_us, double per_sender_rate) {
    for (int s = 0; s < senders_count; s++) {
        conn *c = &conns[s];
        sender *me = &senders[s];
        if (c->dead) continue;
        if (c->out_off < c->out_len) {
            flush(c);
            continue;
        }
        if (window_size) {
            int64_t allowed = (int64_t)me->acked + window_size - (int64_t)me->sent;
            if (allowed <= 0) {
                if (now - me->progress_us > WINDOW_TIMEOUT) { /* its lines were lost: reopen */
                    me->acked = me->sent;
                    me->stalls++;
                    me->progress_us = now;
                }
                continue;
            }
            me->progress_us = now;
            make_lines(s, (int)allowed);
        } else {
            double due = (double)(now - started_us) / 1e6 * per_sender_rate + (double)s / senders_count;
            int64_t behind = (int64_t)due - (int64_t)me->sent;
            if (behind <= 0) continue;
            make_lines(s, behind > MAX_BATCH ? MAX_BATCH : (int)behind);
        }
        flush(c);
    }
}

/* -- connecting ------------------------------------------------------------- */

static void open_one(void) {
    conn *c = &conns[opened];
    c->index = opened++;
    c->started_us = clock_us();
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) fail("socket(): %s (client %d; raise the open-file limit)", strerror(errno), c->index);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&address, sizeof address) < 0 && errno != EINPROGRESS) {
        connect_errors++;
        close(c->fd);
        c->dead = 1;
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)c->index};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    c->want_out = 1;
    if (senders_count && run_mode == FLOW) {
        int peers = peers_of(c->index);
        if (peers) {
            uint32_t size = 4;
            while (size < (uint32_t)peers * 2) size *= 2;
            c->pairs = must(calloc(size, sizeof *c->pairs));
            c->pair_mask = size - 1;
        }
    }
}

static void writable(conn *c) {
    if (!c->connected) {
        int error = 0;
        socklen_t size = sizeof error;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &size);
        if (error) {
            connect_errors++;
            kill_conn(c);
            return;
        }
        c->connected = 1;
        connected_count++;
        introduce(c);
        return;
    }
    flush(c);
}

/* One turn of the event loop: wait at most timeout_ms, handle what came. */
static void turn(int timeout_ms) {
    static struct epoll_event events[1024];
    int n = epoll_wait(epfd, events, 1024, timeout_ms);
    if (n < 0 && errno != EINTR) fail("epoll_wait: %s", strerror(errno));
    now = clock_us();
    for (int i = 0; i < n; i++) {
        uint32_t id = events[i].data.u32;
        if (id == UINT32_MAX) {
            uint64_t ticks;
            if (read(timer_fd, &ticks, sizeof ticks) < 0) { /* nothing: the next tick comes */
            }
            continue;
        }
        conn *c = &conns[id];
        if (c->dead) continue;
        if (events[i].events & (EPOLLOUT | EPOLLERR)) writable(c);
        if (!c->dead && events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) readable(c);
    }
}

static int alive(void) {
    int count = 0;
    for (int i = 0; i < opened; i++) count += !conns[i].dead;
    return count;
}

/* Connects every client (paced), waits until each is synced twice. */
static void set_up(int64_t deadline) {
    int64_t begin = clock_us();
    while (synced_round < 2) {
        now = clock_us();
        if (now > deadline)
            fail("set-up: %d of %d connected, %d welcomed, %d synced in round %d after %.0f s", connected_count,
                 clients, welcomed_count, synced_count, synced_round + 1, setup_timeout);
        /* At most --inflight clients between their connect and their first
         * pong: by then each has its name and rooms, and has left the
         * server's default room. Thousands of clients arriving faster than
         * the server takes them would otherwise pile up in its lobby, and
         * every arrival be told to all of them (a storm of join notices). */
        while (opened < clients && opened - introduced_count < inflight &&
               (connect_rate <= 0 || opened < (double)(now - begin) / 1e6 * connect_rate + 1))
            open_one();
        if (connect_errors || closed_early)
            fail("set-up: %" PRIu64 " connects failed, %" PRIu64 " connections closed by the server (of %d)",
                 connect_errors, closed_early, clients);
        turn(1);
        if (opened == clients && synced_count == clients) {
            synced_round++;
            synced_count = 0;
            if (synced_round < 2)
                for (int i = 0; i < clients; i++) sync_ping(&conns[i]);
        }
    }
}

/* -- /proc ------------------------------------------------------------------ */

/* The server's CPU seconds so far (user and system); its system (kernel)
 * seconds in *kernel, when given. */
static double server_cpu_split(double *kernel) {
    if (kernel) *kernel = 0;
    if (!server_pid) return 0;
    char path[64], data[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", server_pid);
    FILE *file = fopen(path, "r");
    if (!file) return 0;
    size_t n = fread(data, 1, sizeof data - 1, file);
    fclose(file);
    data[n] = '\0';
    char *p = strrchr(data, ')');
    if (!p) return 0;
    unsigned long utime = 0, stime = 0;
    /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2) return 0;
    if (kernel) *kernel = (double)stime / (double)sysconf(_SC_CLK_TCK);
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

static double server_cpu(void) { return server_cpu_split(NULL); }

static long server_rss_kib(void) {
    if (!server_pid) return 0;
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", server_pid);
    FILE *file = fopen(path, "r");
    if (!file) return 0;
    long rss = 0;
    while (fgets(line, sizeof line, file))
        if (strncmp(line, "VmRSS:", 6) == 0) rss = atol(line + 6);
    fclose(file);
    return rss;
}

static double own_cpu(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return (double)usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + (double)usage.ru_stime.tv_sec +
           usage.ru_stime.tv_usec / 1e6;
}

static void print_ms(const char *key, double value) {
    if (value < 0) printf("\"%s\": null, ", key);
    else printf("\"%s\": %.3f, ", key, value);
}

/* Start-up times (connect to welcome) of every welcomed client, sorted. */
static double startup_ms(double fraction) {
    int count = 0;
    double *times = must(malloc(sizeof(double) * (size_t)(opened ? opened : 1)));
    for (int i = 0; i < opened; i++)
        if (conns[i].welcomed) times[count++] = (double)(conns[i].welcomed_us - conns[i].started_us) / 1000.0;
    double result = -1;
    if (count) {
        /* A shell sort: insertion sort is too slow for 20,000. */
        int gap_sizes[] = {4001, 1750, 701, 301, 132, 57, 23, 10, 4, 1};
        for (size_t g = 0; g < sizeof gap_sizes / sizeof *gap_sizes; g++)
            for (int i = gap_sizes[g]; i < count; i++) {
                double value = times[i];
                int j = i;
                for (; j >= gap_sizes[g] && times[j - gap_sizes[g]] > value; j -= gap_sizes[g])
                    times[j] = times[j - gap_sizes[g]];
                times[j] = value;
            }
        int rank = (int)(fraction * count);
        result = times[rank < count ? rank : count - 1];
    }
    free(times);
    return result;
}

/* -- the scenarios ---------------------------------------------------------- */

/* Where the sending stopped: its time, the deliveries and CPU so far,
 * and the deliveries every sender's lines should make. */
typedef struct {
    int64_t at;
    uint64_t deliveries, expected;
    double cpu, server_cpu, server_kernel;
} stop_point;

static void stop_here(stop_point *stop) {
    stop->at = now;
    stop->deliveries = deliveries;
    stop->cpu = own_cpu();
    stop->server_cpu = server_cpu_split(&stop->server_kernel);
    stop->expected = 0;
    for (int s = 0; s < senders_count; s++) stop->expected += senders[s].sent * (uint64_t)senders[s].audience;
}

static int run_flow(void) {
    int64_t begin = clock_us();
    set_up(begin + (int64_t)(setup_timeout * 1e6));
    double per_sender_rate = senders_count ? rate / senders_count : 0;
    if (!window_size && rate > 0) { /* paced: a tick every half millisecond */
        timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
        struct itimerspec every = {.it_interval = {0, 500000}, .it_value = {0, 500000}};
        timerfd_settime(timer_fd, 0, &every, NULL);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
        epoll_ctl(epfd, EPOLL_CTL_ADD, timer_fd, &ev);
    }
    int64_t started = clock_us();
    for (int s = 0; s < senders_count; s++) senders[s].progress_us = started;
    double cpu_start = own_cpu(), kernel_start, server_start = server_cpu_split(&kernel_start);
    uint64_t at_start = deliveries;
    int64_t send_until = started + (int64_t)(duration * 1e6);
    stop_point stop = {0};
    int64_t drain_until = send_until + (int64_t)(drain_timeout * 1e6);
    uint64_t last_total = 0;
    int64_t quiet_since = 0;
    double quiet_cpu = 0;
    sending = 1;
    now = started;
    while (now < drain_until) {
        if (now < send_until) {
            send_turn(started, per_sender_rate);
            turn(window_size ? 1 : 5);
            continue;
        }
        if (!stop.at) { /* finish what was started: the senders' pending bytes */
            int pending = 0;
            for (int s = 0; s < senders_count; s++) {
                flush(&conns[s]);
                pending |= !conns[s].dead && conns[s].out_off < conns[s].out_len;
            }
            if (pending) {
                turn(1);
                continue;
            }
            stop_here(&stop);
            sending = 0;
            quiet_since = now;
            quiet_cpu = stop.server_cpu;
        }
        uint64_t unique = 0;
        for (int s = 0; s < senders_count; s++) unique += senders[s].unique;
        if (unique >= stop.expected) break;
        if (deliveries != last_total) {
            last_total = deliveries;
            quiet_since = now;
            quiet_cpu = server_cpu();
        } else if (now - quiet_since > 2000000) {
            /* Nothing for two seconds: the rest is lost, unless the server
             * worked through them (a tenth of a core or more): an
             * overloaded server may take seconds to deliver its first. */
            double busy = server_cpu();
            if (busy - quiet_cpu < 0.2) break;
            quiet_since = now;
            quiet_cpu = busy;
        }
        turn(5);
    }
    if (!stop.at) stop_here(&stop);
    double seconds = (double)(stop.at - started) / 1e6;
    uint64_t sent = 0, unique = 0, duplicated = 0, reordered = 0, corrupt = corrupted_unattributed, stalls = 0;
    for (int s = 0; s < senders_count; s++) {
        sent += senders[s].sent;
        unique += senders[s].unique;
        duplicated += senders[s].duplicated;
        reordered += senders[s].reordered;
        corrupt += senders[s].corrupted;
        stalls += senders[s].stalls;
    }
    uint64_t timed = stop.deliveries - at_start;
    double driver_cpu = stop.cpu - cpu_start, server_used = stop.server_cpu - server_start;
    printf("{\"sent\": %" PRIu64 ", \"deliveries\": %" PRIu64 ", \"deliveries_per_s\": %.1f, ", sent, deliveries,
           seconds > 0 ? (double)timed / seconds : 0.0);
    print_ms("p50_ms", percentile_ms(0.5));
    print_ms("p99_ms", percentile_ms(0.99));
    print_ms("p999_ms", percentile_ms(0.999));
    print_ms("max_ms", latency_count ? (double)latency_max / 1000.0 : -1);
    printf("\"lost\": %" PRIu64 ", \"corrupted\": %" PRIu64 ", \"gaps\": %" PRIu64 ", \"duplicated\": %" PRIu64
           ", \"reordered\": %" PRIu64 ", \"window_stalls\": %" PRIu64 ", \"notices\": %" PRIu64 ", ",
           stop.expected > unique ? stop.expected - unique : 0, corrupt, gaps, duplicated, reordered, stalls, notices);
    printf("\"seconds\": %.2f, ", seconds);
    if (server_pid) printf("\"server_cores\": %.2f, ", seconds > 0 ? server_used / seconds : 0.0);
    /* How much of the server's CPU was the kernel's (its sends, receives,
     * wake-ups): what no change to the server's own code can take away. */
    if (server_pid && server_used > 0)
        printf("\"server_kernel_share\": %.2f, ", (stop.server_kernel - kernel_start) / server_used);
    printf("\"driver_cores\": %.2f, ", seconds > 0 ? driver_cpu / seconds : 0.0);
    if (server_pid && timed)
        printf("\"server_us_per_delivery\": %.4f, ", server_used * 1e6 / (double)timed);
    if (timed) printf("\"driver_us_per_delivery\": %.4f, ", driver_cpu * 1e6 / (double)timed);
    printf("\"closed_early\": %" PRIu64 ", \"per_sender\": {", closed_early);
    int listed = 0;
    for (int s = 0; s < senders_count && listed < 20; s++) {
        sender *me = &senders[s];
        uint64_t want = me->sent * (uint64_t)me->audience;
        if (me->unique == want && !me->duplicated && !me->reordered && !me->corrupted) continue;
        printf("%s\"%d\": {\"sent\": %" PRIu64 ", \"lost\": %" PRIu64 ", \"duplicated\": %" PRIu64
               ", \"reordered\": %" PRIu64 ", \"corrupted\": %" PRIu64 "}",
               listed++ ? ", " : "", s, me->sent, want > me->unique ? want - me->unique : 0, me->duplicated,
               me->reordered, me->corrupted);
    }
    printf("}}\n");
    return 0;
}

static int run_connect(void) {
    int64_t begin = clock_us();
    double server_start = server_cpu();
    while (opened < clients) open_one();
    int64_t deadline = begin + (int64_t)(setup_timeout * 1e6);
    for (;;) {
        int gone = 0;
        for (int i = 0; i < opened; i++) gone += conns[i].dead && !conns[i].welcomed;
        if (welcomed_count + gone >= clients || clock_us() > deadline) break;
        turn(5);
    }
    int64_t end = clock_us();
    double server_used = server_cpu() - server_start;
    int refused = 0, waiting = 0;
    int64_t last = 0;
    for (int i = 0; i < opened; i++) {
        if (conns[i].welcomed) {
            if (conns[i].welcomed_us - conns[i].started_us > last) last = conns[i].welcomed_us - conns[i].started_us;
        } else if (conns[i].dead) {
            refused++;
        } else {
            waiting++;
        }
    }
    printf("{\"clients\": %d, \"welcomed\": %d, \"refused_or_closed\": %d, \"still_waiting\": %d, ", clients,
           welcomed_count, refused, waiting);
    if (!refused && !waiting) printf("\"all_welcomed_s\": %.3f, ", (double)(end - begin) / 1e6);
    else printf("\"all_welcomed_s\": null, ");
    print_ms("p50_ms", startup_ms(0.5));
    print_ms("p99_ms", startup_ms(0.99));
    printf("\"last_welcome_s\": %.3f, ", (double)last / 1e6);
    if (server_pid) printf("\"server_cpu_s\": %.3f, ", server_used);
    printf("\"driver_cpu_s\": %.3f}\n", own_cpu());
    return 0;
}

static int run_idle(void) {
    long before = server_rss_kib();
    int64_t begin = clock_us();
    set_up(begin + (int64_t)(setup_timeout * 1e6));
    int64_t ready = clock_us();
    int64_t until = ready + (int64_t)(settle * 1e6); /* let the server's threads park */
    while ((now = clock_us()) < until) turn(10);
    long after = server_rss_kib();
    double seconds = (double)(ready - begin) / 1e6;
    printf("{\"clients\": %d, \"settled\": %d, \"errors\": %" PRIu64 ", \"rss_before_kib\": %ld, "
           "\"rss_after_kib\": %ld, ",
           clients, alive(), connect_errors + closed_early, before, after);
    if (server_pid) printf("\"kib_per_client\": %.1f, ", (double)(after - before) / clients);
    else printf("\"kib_per_client\": null, ");
    print_ms("startup_p50_ms", startup_ms(0.5));
    print_ms("startup_p99_ms", startup_ms(0.99));
    printf("\"connects_per_s\": %.0f, \"seconds\": %.2f, \"notices\": %" PRIu64 "}\n",
           seconds > 0 ? clients / seconds : 0.0, seconds, notices);
    return 0;
}

/* -- main ------------------------------------------------------------------- */

static void usage(const char *name) {
    fprintf(stderr,
            "usage: %s --port PORT [--protocol native|irc|ws] [--mode flow|connect|idle] [--clients N]\n"
            "       [--senders N] [--window W | --rate LINES_PER_S] [--duration S] [--rooms R]\n"
            "       [--rooms-per-client K] [--line-size BYTES] [--connect-rate PER_S] [--inflight N]\n"
            "       [--server-pid PID] [--setup-timeout S] [--drain-timeout S] [--settle S] [--show-notices N]\n",
            name);
    exit(2);
}

static void raise_file_limit(long wanted) {
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
    if ((long)limit.rlim_max < wanted) { /* allowed when privileged */
        struct rlimit more = {(rlim_t)wanted, (rlim_t)wanted};
        if (setrlimit(RLIMIT_NOFILE, &more) == 0) return;
    }
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *option = argv[i];
        if (i + 1 >= argc) usage(argv[0]);
        const char *value = argv[++i];
        if (!strcmp(option, "--port")) port = atoi(value);
        else if (!strcmp(option, "--protocol"))
            proto = !strcmp(value, "irc") ? IRC : !strcmp(value, "ws") ? WS : !strcmp(value, "native") ? NATIVE : -1;
        else if (!strcmp(option, "--mode"))
            run_mode = !strcmp(value, "connect") ? CONNECT : !strcmp(value, "idle") ? IDLE : !strcmp(value, "flow") ? FLOW : -1;
        else if (!strcmp(option, "--clients")) clients = atoi(value);
        else if (!strcmp(option, "--senders")) senders_count = atoi(value);
        else if (!strcmp(option, "--window")) window_size = atoi(value);
        else if (!strcmp(option, "--rate")) rate = atof(value);
        else if (!strcmp(option, "--duration")) duration = atof(value);
        else if (!strcmp(option, "--rooms")) rooms = atoi(value);
        else if (!strcmp(option, "--rooms-per-client")) rooms_per_client = atoi(value);
        else if (!strcmp(option, "--line-size")) line_size = atoi(value);
        else if (!strcmp(option, "--connect-rate")) connect_rate = atof(value);
        else if (!strcmp(option, "--inflight")) inflight = atoi(value);
        else if (!strcmp(option, "--server-pid")) server_pid = atoi(value);
        else if (!strcmp(option, "--setup-timeout")) setup_timeout = atof(value);
        else if (!strcmp(option, "--drain-timeout")) drain_timeout = atof(value);
        else if (!strcmp(option, "--settle")) settle = atof(value);
        else if (!strcmp(option, "--show-notices")) show_notices = atoi(value);
        else usage(argv[0]);
    }
    if ((int)proto < 0 || (int)run_mode < 0 || port <= 0 || port > 65535 || clients < 1 || clients > 99999 ||
        inflight < 1)
        usage(argv[0]);
    if (run_mode != FLOW) senders_count = 0;
    if (run_mode == FLOW) {
        if (senders_count < 1 || senders_count > clients || clients < 2) fail("a flow needs 1 to --clients senders, and 2 clients or more");
        if (!window_size && rate <= 0) fail("a flow needs --window W or --rate LINES_PER_S");
        if (duration <= 0 || duration > 3600) fail("--duration must be more than 0 and at most 3600 seconds");
    }
    if (rooms < 0 || rooms > 9999 || rooms_per_client < 1 || (rooms && rooms_per_client > rooms))
        fail("--rooms must be 0 to 9999 and --rooms-per-client 1 to --rooms");
    if (proto == IRC && !rooms) rooms_per_client = 1;
    text_len = line_size - NICK_PREFIX - 1;
    if (text_len < TAIL + 1 || text_len > 4000) fail("--line-size must be %d to %d", NICK_PREFIX + TAIL + 2, 4000);
    memset(pad, 'x', sizeof pad);
    signal(SIGPIPE, SIG_IGN);
    raise_file_limit(clients + 64L);
    conns = must(calloc((size_t)clients, sizeof *conns));
    epfd = epoll_create1(0);
    plan_rooms();
    int status;
    if (run_mode == FLOW) status = run_flow();
    else if (run_mode == CONNECT) status = run_connect();
    else status = run_idle();
    fflush(stdout);
    return status;
}
