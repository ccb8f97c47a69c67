// chatcore's web page: one module, no framework, no build step.
//
// The server's JSON events are documented in docs/protocol.md ("The
// WebSocket protocol"). Everything people typed (chat, nicks, room names) is
// put on the page as text nodes, never parsed as HTML (tests/test_web.py
// checks that no HTML-parsing DOM call is used), and
// links are <a> elements built from a parsed http(s) URL only.

const MAX_LOG = 1000; // entries kept on the page
const MAX_SEEN = 20000; // identities remembered for dropping replayed duplicates
const BACKOFF_FIRST = 500; // ms
const BACKOFF_MAX = 30000;

const $ = (id) => document.getElementById(id);
const log = $("log");
const stateView = $("state");

const me = { nick: "", room: "", rooms: [], wantedNick: localStorage.getItem("chatcore.nick") || "", wantedRoom: "" };
// One buffer of lines per room this page is in: #log shows the current
// room's; the others count what arrived unseen (a badge in the room list).
const buffers = new Map(); // room -> [li, ...]
const unseen = new Map(); // room -> lines that arrived while another room was shown
let lastRooms = []; // the last /rooms answer, drawn again when a badge changes
let roomsBefore = []; // the rooms this page was in before a reconnect
const myNicks = new Set(); // every nick this page has had: its own lines come back under them
let socket = null;
let attempts = 0;
let reconnectTimer = null;
let quitting = false;
let rejoining = false; // after a reconnect, on the way from the default room back to ours
let wasConnected = false;
let members = new Set();
// What this page has seen, for resuming without duplicates.
const seen = new Set(); // "room epoch offset", and "room time type nick text"
const positions = new Map(); // room -> {epoch, offset}: the highest offset seen
const ownLines = []; // {room, text} said by this page, not echoed by the server
const quietAnswers = { members: 0, rooms: 0 }; // answers to our own /who and /rooms, not shown in the log
let unread = 0;
let unreadMarker = null;

// -- the connection --------------------------------------------------------------

function connect() {
  clearTimeout(reconnectTimer);
  setState("connecting", "connecting…");
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  const ws = new WebSocket(url);
  socket = ws;
  ws.onopen = () => {
    attempts = 0;
    setState("connected", "connected");
  };
  ws.onmessage = (message) => {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    handle(event);
  };
  ws.onclose = () => {
    if (socket !== ws) return;
    socket = null;
    if (quitting) {
      setState("closed", "disconnected (you quit): reload the page to come back");
      return;
    }
    if (wasConnected) note("disconnected from the server", "system");
    if (wasConnected) roomsBefore = [...me.rooms];
    wasConnected = false;
    // Exponential backoff with jitter, so a restarted server is not hit by
    // every browser at the same instant.
    const delay = Math.min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** attempts) * (0.5 + Math.random() / 2);
    attempts += 1;
    const when = Date.now() + delay;
    const tick = () => {
      const left = Math.max(0, Math.ceil((when - Date.now()) / 1000));
      setState("disconnected", `disconnected: reconnecting in ${left} s`);
    };
    tick();
    const countdown = setInterval(tick, 1000);
    reconnectTimer = setTimeout(() => {
      clearInterval(countdown);
      connect();
    }, delay);
    $("reconnect").onclick = () => {
      clearInterval(countdown);
      connect();
    };
  };
}

function setState(state, text) {
  stateView.dataset.state = state;
  stateView.textContent = text;
  $("reconnect").hidden = state !== "disconnected";
  document.body.dataset.state = state;
}

function sendLine(text) {
  if (!socket || socket.readyState !== WebSocket.OPEN) {
    note("not connected: your message was not sent", "error");
    return false;
  }
  socket.send(JSON.stringify({ type: "line", text }));
  return true;
}

// -- events from the server ----------------------------------------------------

function handle(event) {
  if (event.you) updateYou(event.you);
  switch (event.type) {
    case "welcome":
      welcomed(event);
      break;
    case "chat":
    case "action":
    case "join":
    case "leave":
    case "nick":
    case "room_notice":
      roomEvent(event, false);
      break;
    case "history":
      for (const old of event.events) roomEvent(old, true);
      break;
    case "resume":
      resumed(event);
      break;
    case "private":
      privateMessage(event);
      break;
    case "members":
      if (event.room === me.room) {
        members = new Set(event.nicks);
        renderMembers();
      }
      if (quietAnswers.members > 0) quietAnswers.members -= 1;
      else note(`in ${event.room} (${event.nicks.length}): ${event.nicks.join(", ")}`, "notice");
      break;
    case "rooms":
      renderRooms(event.rooms);
      if (quietAnswers.rooms > 0) quietAnswers.rooms -= 1;
      else note(`${event.rooms.length} rooms: ${event.rooms.map((r) => `${r.room} (${r.members})`).join(", ")}`, "notice");
      break;
    case "notice":
      note(event.text, "notice");
      if (event.text.startsWith("you are logged in to ")) loggedIn();
      break;
    case "error":
      if (/^(password required|wrong password)/.test(event.text)) {
        askPassword(event.text);
        break;
      }
      if (accountPassword !== null && LOGIN_REFUSED.test(event.text)) {
        loginRefused(event.text);
        break;
      }
      if (rejoining) {
        rejoining = false; // our room could not be entered again: stay where the server put us
        roomsBefore = [];
        me.wantedRoom = me.room;
      }
      if (!$("nick-dialog").open || !showNickError(event.text)) note(event.text, "error");
      break;
    default:
      break; // a newer server's event: nothing to show
  }
}

function welcomed(event) {
  if ($("password-dialog").open) $("password-dialog").close();
  const resuming = wasConnected === false && positions.size > 0;
  wasConnected = true;
  for (const line of event.lines) note(line, "notice");
  // Logged in first (the nick follows the answer), so that the account's
  // nick is ours when we take it.
  if (me.wantedNick && accountPassword !== null) sendLine(`/login ${me.wantedNick} ${accountPassword}`);
  else if (me.wantedNick && me.wantedNick !== me.nick) sendLine(`/nick ${me.wantedNick}`);
  else if (!me.wantedNick) askNick();
  const room = me.wantedRoom;
  rejoining = Boolean(room && room !== me.room);
  // Back into every room the page was in, the current one last (it becomes
  // current again), and out of the server's default room if it was not one.
  const before = roomsBefore.length ? roomsBefore : [room || me.room];
  const others = before.filter((r) => r !== room && r !== me.room);
  for (const r of others) sendLine(`/join ${r}`);
  if (room && (room !== me.room || others.length)) sendLine(`/join ${room}`);
  // Each room is resumed once the page is in it again (a resume of a room
  // it is not in yet is refused): now, or as the joins are answered.
  if (resuming) for (const r of before) toResume.add(r);
  resumeJoined();
  if (me.room && !before.includes(me.room)) sendLine(`/part ${me.room}`);
  refresh();
}

function updateYou(you) {
  if (you.nick !== me.nick) {
    // The room is told of our new nick, but not we: update our own entry.
    if (members.delete(me.nick)) members.add(you.nick);
    me.nick = you.nick;
    myNicks.add(you.nick);
    renderMembers();
    if (you.nick === me.wantedNick) closeNick();
  }
  if (you.room !== me.room) {
    me.room = you.room;
    // After a reconnect the server puts us in its default room first; the
    // room we were in stays the one we want until we are back in it.
    if (!me.wantedRoom || wasConnected) me.wantedRoom = you.room;
    if (you.room === me.wantedRoom) rejoining = false;
    $("room-name").textContent = you.room ? `#${you.room}` : "";
    $("members-room").textContent = you.room;
    members = new Set();
    renderMembers();
    showBuffer(you.room);
    refresh();
  }
  if (you.rooms && you.rooms.join() !== me.rooms.join()) {
    me.rooms = you.rooms;
    // A room left goes with its lines; not on the way back after a
    // reconnect, when the server has put the page in its default room only.
    if (wasConnected && !roomsBefore.length) {
      for (const room of [...buffers.keys()]) {
        if (!me.rooms.includes(room)) {
          buffers.delete(room);
          unseen.delete(room);
        }
      }
    }
    renderRooms(lastRooms);
    resumeJoined();
    if (roomsBefore.length && roomsBefore.every((room) => me.rooms.includes(room))) roomsBefore = []; // back in all
  }
}

const toResume = new Set(); // rooms to ask for what was missed, once the page is in them

function resumeJoined() {
  for (const room of [...toResume]) {
    if (!me.rooms.includes(room) || !socket) continue;
    toResume.delete(room);
    const where = positions.get(room);
    if (where) {
      // The answer includes a few events before the offset too (two people's
      // lines may have crossed); those already seen are dropped.
      socket.send(JSON.stringify({ type: "resume", room, epoch: where.epoch, offset: where.offset }));
    }
  }
}

function bufferOf(room) {
  if (!buffers.has(room)) buffers.set(room, []);
  return buffers.get(room);
}

function showBuffer(room) {
  unreadMarker?.remove();
  unreadMarker = null;
  log.replaceChildren(...bufferOf(room));
  log.scrollTop = log.scrollHeight;
  unseen.delete(room);
  renderRooms(lastRooms);
}

function refresh() {
  if (sendLine("/who")) quietAnswers.members += 1;
  if (sendLine("/rooms")) quietAnswers.rooms += 1;
}

function roomEvent(event, replayed) {
  // Seen before? By identity, and by content and time for events kept
  // across a restart of the server (they come back without an identity).
  const keys = [`${event.room} ${event.time} ${event.type} ${event.nick} ${event.text}`];
  if (event.offset) keys.push(`${event.room} ${event.epoch} ${event.offset}`);
  if (keys.some((key) => seen.has(key))) return;
  for (const key of keys) seen.add(key);
  if (seen.size > MAX_SEEN) {
    // Forget the oldest: a replay reaches back a few dozen events, not thousands.
    for (const key of [...seen].slice(0, seen.size - MAX_SEEN / 2)) seen.delete(key);
  }
  if (event.offset) {
    const where = positions.get(event.room);
    if (!where || where.epoch !== event.epoch || where.offset < event.offset) {
      positions.set(event.room, { epoch: event.epoch, offset: event.offset });
    }
  }
  if (replayed && event.type === "chat" && takeOwnLine(event)) return;
  // Into the buffer of its room, if this page is in it.
  const room = event.room;
  if (!me.rooms.includes(room) && room !== me.room) return;
  const shown = room === me.room; // the member list is the current room's
  const time = event.time ? new Date(event.time * 1000) : new Date();
  switch (event.type) {
    case "chat":
      line({ time, nick: event.nick, text: event.text, kind: "chat", replayed, room });
      break;
    case "action":
      line({ time, nick: event.nick, text: event.text, kind: "action", replayed, room });
      break;
    case "join":
      if (shown) {
        members.add(event.nick);
        renderMembers();
      }
      note(`${event.nick} joined`, "event", time, room);
      roomsChanged();
      break;
    case "leave":
      if (shown) {
        members.delete(event.nick);
        renderMembers();
      }
      note(`${event.nick} left${plainLeave(event.reason) ? "" : ` (${event.reason})`}`, "event", time, room);
      roomsChanged();
      break;
    case "nick":
      if (shown) {
        members.delete(event.nick);
        members.add(event.new_nick);
        renderMembers();
      }
      note(`${event.nick} is now known as ${event.new_nick}`, "event", time, room);
      break;
    case "room_notice":
      note(event.text, "notice", time, room);
      break;
  }
}

// The room list follows people coming and going: asked again a moment
// after a join or leave (once for a burst of them), never on a timer alone.
let roomsTimer = null;

function roomsChanged() {
  if (roomsTimer) return;
  roomsTimer = setTimeout(() => {
    roomsTimer = null;
    if (sendLine("/rooms")) quietAnswers.rooms += 1;
  }, 500);
}

function plainLeave(reason) {
  return reason === "quit" || reason === "connection closed";
}

// Our own chat is not sent back to us, so a replay after a reconnect would
// show it twice: it is matched with what this page showed when it was said.
function takeOwnLine(event) {
  const index = ownLines.findIndex((own) => own.room === event.room && own.text === event.text);
  if (index < 0 || !myNicks.has(event.nick)) return false;
  ownLines.splice(index, 1);
  return true;
}

function resumed(event) {
  for (const old of event.events) roomEvent(old, true);
  if (!event.complete) {
    note(`you may have missed messages while you were disconnected (${event.reason})`, "missed");
  }
}

function privateMessage(event) {
  const text = event.echo ? `→ ${event.to}: ${event.text}` : event.text;
  line({ time: new Date(), nick: event.echo ? me.nick : event.from, text, kind: "private" });
}

// -- the log ---------------------------------------------------------------------

function entry(kind, time) {
  const item = document.createElement("li");
  item.className = `msg ${kind}`;
  item.dataset.kind = kind;
  const stamp = document.createElement("time");
  stamp.dateTime = time.toISOString();
  stamp.textContent = time.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  stamp.title = time.toLocaleString();
  item.append(stamp, " ");
  return item;
}

function line({ time, nick, text, kind, replayed = false, room = me.room }) {
  const item = entry(kind, time);
  if (replayed) item.classList.add("replayed");
  if (nick === me.nick) item.classList.add("own");
  const who = document.createElement("span");
  who.className = "nick";
  who.textContent = kind === "action" ? `* ${nick}` : nick;
  const body = document.createElement("span");
  body.className = "text";
  appendLinkified(body, text);
  item.append(who, " ", body);
  add(item, !replayed && nick !== me.nick, room);
}

function note(text, kind, time = new Date(), room = me.room) {
  const item = entry(kind, time);
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  item.append(body);
  add(item, false, room);
}

// Only http and https URLs become links; everything else, "javascript:"
// included, stays text.
const URL_PATTERN = /\bhttps?:\/\/[^\s<>"']+/gi;

function appendLinkified(parent, text) {
  let last = 0;
  for (const match of text.matchAll(URL_PATTERN)) {
    const raw = match[0].replace(/[.,;:!?)\]]+$/, "");
    parent.append(text.slice(last, match.index));
    let url = null;
    try {
      url = new URL(raw);
    } catch {
      url = null;
    }
    if (url && (url.protocol === "http:" || url.protocol === "https:")) {
      const link = document.createElement("a");
      link.href = url.href;
      link.textContent = raw;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      parent.append(link);
    } else {
      parent.append(raw);
    }
    last = match.index + raw.length;
  }
  parent.append(text.slice(last));
}

function add(item, countsAsUnread, room = me.room) {
  const buffer = bufferOf(room);
  buffer.push(item);
  while (buffer.length > MAX_LOG) buffer.shift().remove();
  if (room !== me.room) {
    if (countsAsUnread) {
      unseen.set(room, (unseen.get(room) || 0) + 1);
      renderRooms(lastRooms);
    }
    return;
  }
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  if (countsAsUnread && document.hidden) {
    if (unread === 0) {
      unreadMarker?.remove();
      unreadMarker = document.createElement("li");
      unreadMarker.className = "unread-marker";
      unreadMarker.textContent = "new messages";
      log.append(unreadMarker);
    }
    unread += 1;
    document.title = `(${unread}) chatcore`;
  }
  log.append(item);
  while (log.children.length > MAX_LOG) log.firstElementChild.remove();
  if (atBottom) log.scrollTop = log.scrollHeight;
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden) {
    unread = 0;
    document.title = "chatcore";
  }
});

// -- side panels -----------------------------------------------------------------

function renderMembers() {
  const list = $("members");
  list.replaceChildren(
    ...[...members].sort((a, b) => a.localeCompare(b)).map((nick) => {
      const item = document.createElement("li");
      item.textContent = nick;
      if (nick === me.nick) item.classList.add("own");
      item.title = `/msg ${nick}`;
      item.onclick = () => {
        const input = $("input");
        input.value = `/msg ${nick} `;
        input.focus();
      };
      return item;
    }),
  );
  $("members-count").textContent = String(members.size);
}

function renderRooms(rooms) {
  lastRooms = rooms;
  // The rooms this page is in come first (even before /rooms has answered).
  const counts = new Map(rooms.map(({ room, members: count }) => [room, count]));
  const names = [...me.rooms, ...rooms.map(({ room }) => room).filter((room) => !me.rooms.includes(room))];
  $("rooms").replaceChildren(
    ...names.map((room) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "room";
      button.textContent = counts.has(room) ? `${room} (${counts.get(room)})` : room;
      button.title = me.rooms.includes(room) ? `show ${room}` : `join ${room}`;
      button.onclick = () => joinRoom(room);
      item.append(button);
      if (room === me.room) item.classList.add("current");
      if (me.rooms.includes(room)) {
        item.classList.add("joined");
        const count = unseen.get(room) || 0;
        if (count) {
          const badge = document.createElement("span");
          badge.className = "badge";
          badge.textContent = String(count);
          badge.title = `${count} new in ${room}`;
          item.append(" ", badge);
        }
        const leave = document.createElement("button");
        leave.type = "button";
        leave.className = "leave";
        leave.textContent = "×";
        leave.title = `leave ${room}`;
        leave.setAttribute("aria-label", `leave ${room}`);
        leave.onclick = () => sendLine(`/part ${room}`);
        item.append(" ", leave);
      }
      return item;
    }),
  );
}

function joinRoom(room) {
  // /join of a room the page is in already only makes it current: a switch.
  if (room && room !== me.room) sendLine(`/join ${room}`);
}

// -- the server password ---------------------------------------------------------

// Kept in this page's memory only (never in storage), to enter again after a
// reconnect without asking.
let serverPassword = null;

function askPassword(text) {
  const wrong = text.startsWith("wrong password");
  if (serverPassword !== null && !wrong) {
    sendLine(`/pass ${serverPassword}`);
    return;
  }
  serverPassword = null;
  $("password-error").textContent = wrong ? "wrong password: try again" : "";
  const dialog = $("password-dialog");
  if (!dialog.open) dialog.showModal();
  $("password-input").focus();
}

$("password-form").addEventListener("submit", (submit) => {
  submit.preventDefault();
  const password = $("password-input").value;
  if (!password) return;
  $("password-input").value = "";
  serverPassword = password;
  sendLine(`/pass ${password}`);
});

// -- the account -----------------------------------------------------------------

// The account's password, kept in this page's memory only (never in
// storage), to log in again after a reconnect without asking.
let accountPassword = null;
const LOGIN_REFUSED = /^(wrong account name or password|too many failed logins|the account \S+ is suspended)/;

function loggedIn() {
  if (me.wantedNick && me.wantedNick !== me.nick) sendLine(`/nick ${me.wantedNick}`);
  else closeNick();
}

function loginRefused(text) {
  accountPassword = null;
  askNick();
  $("nick-error").textContent = text;
}

// -- the nickname ----------------------------------------------------------------

function askNick() {
  const dialog = $("nick-dialog");
  $("nick-input").value = me.wantedNick || "";
  if (!dialog.open) dialog.showModal();
  $("nick-input").focus();
}

function closeNick() {
  $("nick-error").textContent = "";
  if ($("nick-dialog").open) $("nick-dialog").close();
}

function showNickError(text) {
  if (!/nickname/i.test(text)) return false;
  $("nick-error").textContent = text;
  me.wantedNick = "";
  localStorage.removeItem("chatcore.nick");
  return true;
}

$("nick-form").addEventListener("submit", (submit) => {
  submit.preventDefault();
  const nick = $("nick-input").value.trim();
  if (!nick) return;
  me.wantedNick = nick;
  localStorage.setItem("chatcore.nick", nick);
  $("nick-error").textContent = "";
  const password = $("account-password").value;
  $("account-password").value = "";
  if (password) {
    accountPassword = password;
    sendLine(`/login ${nick} ${password}`); // the nick follows the answer (loggedIn)
  } else if (nick === me.nick) closeNick();
  else sendLine(`/nick ${nick}`);
});

// -- typing ----------------------------------------------------------------------

$("input-form").addEventListener("submit", (submit) => {
  submit.preventDefault();
  const input = $("input");
  const text = input.value.trim();
  if (!text) return;
  const command = text.startsWith("/") && !text.startsWith("//") ? text.slice(1).split(/\s+/)[0].toLowerCase() : "";
  if (command === "nick") {
    const wanted = text.split(/\s+/)[1] || "";
    me.wantedNick = wanted;
    localStorage.setItem("chatcore.nick", wanted);
  } else if (command === "quit") {
    quitting = true;
  }
  if (!sendLine(text)) return;
  input.value = "";
  if (!command) {
    const said = text.startsWith("//") ? text.slice(1) : text;
    ownLines.push({ room: me.room, text: said });
    if (ownLines.length > 200) ownLines.shift();
    line({ time: new Date(), nick: me.nick, text: said, kind: "chat" });
  }
  unread = 0;
  document.title = "chatcore";
  unreadMarker?.remove();
  unreadMarker = null;
});

$("join-form").addEventListener("submit", (submit) => {
  submit.preventDefault();
  joinRoom($("join-input").value.trim().toLowerCase());
  $("join-input").value = "";
});

$("toggle-side").addEventListener("click", () => {
  const open = document.body.classList.toggle("side-open");
  $("toggle-side").setAttribute("aria-expanded", String(open));
});

// Rooms this page is not in change unseen (no events reach it from them):
// the list is asked for again now and then while the page is looked at.
setInterval(() => {
  if (!document.hidden && socket && socket.readyState === WebSocket.OPEN && sendLine("/rooms")) quietAnswers.rooms += 1;
}, 30000);

connect();
