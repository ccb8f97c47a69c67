/*
 * The benchmarks' C reference: a single-threaded epoll chat server, the
 * measure of what this machine can do (issue 16). benchmarks/broadcast.py
 * builds it with the system C compiler and runs it beside chatcore.
 *
 * It does the work a chat server must do, and nothing chatcore does beyond
 * that: it frames lines (split at "\n", a trailing "\r" dropped, lines over
 * 4096 bytes refused), prefixes chat with "<nick> ", never echoes a line to
 * its sender, tells the room who joined and left, and answers the commands
 * the driver uses (/nick, /ping, /quit). No filters, no logging, no
 * sanitising, no plugins: one room.
 *
 * Output is coalesced: a broadcast appends to each member's buffer, and
 * once per turn of the event loop every member with new output gets one
 * send() of everything it has pending. A member that cannot take it is
 * polled for EPOLLOUT; one with more than 16 MB pending is dropped as a
 * slow consumer, so nobody waits for it.
 *
 *     cc -O2 -o c_epoll_server c_epoll_server.c
 *     ./c_epoll_server --port 0     # prints "c-epoll listening on 127.0.0.1:PORT"
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_LINE 4096
#define MAX_PENDING (16u << 20)
#define READ_SIZE 65536

typedef struct {
    char *data;
    size_t len, cap;
} buffer;

typedef struct {
    int fd;
    int member;       /* index in room[], or -1 */
    int dirty;        /* on the dirty list this turn */
    int polling_out;  /* waiting for EPOLLOUT */
    int closing;      /* to be closed at the end of the turn */
    int discarding;   /* skipping the rest of a line that was too long */
    char nick[32];
    buffer in;        /* an unfinished input line */
    buffer out;       /* output not yet sent; sent from out_off */
    size_t out_off;
} client;

static client **by_fd;
static int fd_capacity;
static int *room, room_len;
static int *dirty, dirty_len;
static int *closing, closing_len;
static int epfd;
static unsigned long guests;

static void *must(void *p) {
    if (!p) {
        perror("c-epoll: out of memory");
        exit(1);
    }
    return p;
}

static void append(buffer *b, const char *data, size_t len) {
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len) cap *= 2;
        b->data = must(realloc(b->data, cap));
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
}

static void close_later(client *c) {
    if (!c->closing) {
        c->closing = 1;
        closing[closing_len++] = c->fd;
    }
}

static void queue(client *c, const char *data, size_t len) {
    if (c->closing) return;
    if (c->out.len - c->out_off + len > MAX_PENDING) {  /* slow consumer */
        close_later(c);
        return;
    }
    if (c->out_off && c->out_off >= c->out.len / 2) {  /* keep the buffer from creeping */
        memmove(c->out.data, c->out.data + c->out_off, c->out.len - c->out_off);
        c->out.len -= c->out_off;
        c->out_off = 0;
    }
    append(&c->out, data, len);
    if (!c->dirty) {
        c->dirty = 1;
        dirty[dirty_len++] = c->fd;
    }
}

static void say(client *c, const char *text) { queue(c, text, strlen(text)); }

/* To every member of the room but `except` (which may be NULL). */
static void broadcast(client *except, const char *data, size_t len) {
    for (int i = 0; i < room_len; i++) {
        client *m = by_fd[room[i]];
        if (m != except) queue(m, data, len);
    }
}

static void broadcast_text(client *except, const char *text) { broadcast(except, text, strlen(text)); }

static void flush(client *c) {
    while (c->out_off < c->out.len) {
        ssize_t n = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->polling_out) {
                struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.fd = c->fd};
                epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
                c->polling_out = 1;
            }
            return;
        }
        if (n < 0 && errno == EINTR) continue;
        close_later(c);
        return;
    }
    c->out.len = c->out_off = 0;
    if (c->polling_out) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = c->fd};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        c->polling_out = 0;
    }
}

static void handle_line(client *c, char *line, size_t len) {
    char notice[128];
    if (len && line[len - 1] == '\r') len--;
    if (len == 0) return;
    if (line[0] == '/' && !(len > 1 && line[1] == '/')) {
        if (len > 6 && memcmp(line, "/nick ", 6) == 0) {
            char old[32];
            size_t n = len - 6 < sizeof c->nick - 1 ? len - 6 : sizeof c->nick - 1;
            memcpy(old, c->nick, sizeof old);
            memcpy(c->nick, line + 6, n);
            c->nick[n] = '\0';
            snprintf(notice, sizeof notice, "* you are now known as %s\n", c->nick);
            say(c, notice);
            snprintf(notice, sizeof notice, "* %s is now known as %s\n", old, c->nick);
            broadcast_text(c, notice);
        } else if (len == 5 && memcmp(line, "/ping", 5) == 0) {
            say(c, "* pong\n");
        } else if (len == 5 && memcmp(line, "/quit", 5) == 0) {
            close_later(c);
        } else {
            say(c, "! unknown command\n");
        }
        return;
    }
    if (line[0] == '/') {  /* "//text" says "/text" */
        line++;
        len--;
    }
    /* "<nick> " + line + "\n", built once, queued to every member. */
    char stack[MAX_LINE + 64];
    size_t nick_len = strlen(c->nick);
    char *out = stack;
    out[0] = '<';
    memcpy(out + 1, c->nick, nick_len);
    out[1 + nick_len] = '>';
    out[2 + nick_len] = ' ';
    memcpy(out + 3 + nick_len, line, len);
    out[3 + nick_len + len] = '\n';
    broadcast(c, out, 4 + nick_len + len);
}

static void handle_input(client *c, char *data, size_t len) {
    while (len && !c->closing) {
        char *newline = memchr(data, '\n', len);
        size_t part = newline ? (size_t)(newline - data) : len;
        if (c->discarding) {
            if (newline) c->discarding = 0;
        } else if (c->in.len + part > MAX_LINE) {
            say(c, "! line too long; it was not sent\n");
            c->in.len = 0;
            c->discarding = newline == NULL;
        } else if (newline && c->in.len == 0) {
            handle_line(c, data, part);  /* the common case: a whole line in this read */
        } else {
            append(&c->in, data, part);
            if (newline) {
                handle_line(c, c->in.data, c->in.len);
                c->in.len = 0;
            }
        }
        if (!newline) return;
        data = newline + 1;
        len -= part + 1;
    }
}

static void join(int fd) {
    if (fd >= fd_capacity) {
        int capacity = fd_capacity;
        while (capacity <= fd) capacity *= 2;
        by_fd = must(realloc(by_fd, sizeof *by_fd * capacity));
        memset(by_fd + fd_capacity, 0, sizeof *by_fd * (capacity - fd_capacity));
        room = must(realloc(room, sizeof *room * capacity));
        dirty = must(realloc(dirty, sizeof *dirty * capacity));
        closing = must(realloc(closing, sizeof *closing * capacity));
        fd_capacity = capacity;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    client *c = must(calloc(1, sizeof *c));
    c->fd = fd;
    snprintf(c->nick, sizeof c->nick, "guest-%lu", ++guests);
    by_fd[fd] = c;
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    char notice[96];
    snprintf(notice, sizeof notice, "* welcome, you are %s\n", c->nick);
    say(c, notice);
    snprintf(notice, sizeof notice, "* %s joined\n", c->nick);
    broadcast_text(NULL, notice);
    c->member = room_len;
    room[room_len++] = fd;
}

static void leave(client *c) {
    int last = room[--room_len];
    room[c->member] = last;
    by_fd[last]->member = c->member;
    by_fd[c->fd] = NULL;
    close(c->fd);
    char notice[64];
    snprintf(notice, sizeof notice, "* %s left\n", c->nick);
    broadcast_text(NULL, notice);
    free(c->in.data);
    free(c->out.data);
    free(c);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 12000;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--port") == 0) port = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--host") == 0) host = argv[i + 1];
        else {
            fprintf(stderr, "usage: %s [--host HOST] [--port PORT]\n", argv[0]);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {  /* thousands of idle clients */
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &address.sin_addr) != 1) {
        fprintf(stderr, "c-epoll: %s is not an IPv4 address\n", host);
        return 2;
    }
    if (bind(listener, (struct sockaddr *)&address, sizeof address) || listen(listener, 4096)) {
        perror("c-epoll: cannot listen");
        return 1;
    }
    socklen_t size = sizeof address;
    getsockname(listener, (struct sockaddr *)&address, &size);
    printf("c-epoll listening on %s:%d\n", host, ntohs(address.sin_port));
    fflush(stdout);

    fd_capacity = 1024;
    by_fd = must(calloc(fd_capacity, sizeof *by_fd));
    room = must(malloc(sizeof *room * fd_capacity));
    dirty = must(malloc(sizeof *dirty * fd_capacity));
    closing = must(malloc(sizeof *closing * fd_capacity));
    epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = listener};
    epoll_ctl(epfd, EPOLL_CTL_ADD, listener, &ev);
    struct epoll_event events[512];
    static char data[READ_SIZE];
    for (;;) {
        int n = epoll_wait(epfd, events, 512, -1);
        if (n < 0 && errno == EINTR) continue;
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == listener) {
                int accepted;
                while ((accepted = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) join(accepted);
                continue;
            }
            client *c = by_fd[fd];
            if (!c || c->closing) continue;
            if (events[i].events & EPOLLOUT) flush(c);
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                ssize_t got = recv(fd, data, sizeof data, 0);
                if (got > 0) handle_input(c, data, (size_t)got);
                else if (got == 0 || (errno != EAGAIN && errno != EINTR)) close_later(c);
            }
        }
        /* Once per turn: one send of everything pending, per member; then
         * the leaves, whose notices are output too: until nothing is left. */
        while (dirty_len || closing_len) {
            for (int i = 0; i < dirty_len; i++) {
                client *c = by_fd[dirty[i]];
                if (!c) continue;
                c->dirty = 0;
                if (!c->closing && !c->polling_out) flush(c);
            }
            dirty_len = 0;
            while (closing_len) {
                client *c = by_fd[closing[--closing_len]];
                if (c) leave(c);
            }
        }
    }
}
