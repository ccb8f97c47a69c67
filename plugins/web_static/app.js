// chatcore's web page: one module, no framework, no build step.
//
// The server's JSON events are documented in docs/protocol.md ("The
// WebSocket protocol"). Everything people typed (chat, nicks, room names) is
// put on the page as text nodes, never parsed as HTML (tests/test_web.py
// checks that no HTML-parsing DOM call is used), and
// links are <a> elements built from a parsed http(s) URL only.

const MAX_LOG = 1000; // entries kept on the page
const MAX_SEEN = 20000; // identities remembered for dropping replayed duplicates
const HISTORY_PAGE = 100; // lines asked for at a time when scrolling back
const NEAR_TOP = 80; // px from the top of the log where older lines are asked for
const BACKOFF_FIRST = 500; // ms
const BACKOFF_MAX = 30000;

const $ = (id) => document.getElementById(id);
const log = $("log");
const stateView = $("state");

const me = {
  nick: "",
  room: "",
  rooms: [],
  oper: false, // a server operator: sets the topic of every room
  wantedNick: localStorage.getItem("chatcore.nick") || "",
  wantedRoom: "",
};
// One buffer of lines per room this page is in, and one per private
// conversation: #log shows one of them (the view); the others count what
// arrived unseen (a badge in the room list or the private list). A buffer's
// key is the room's name, "@" and the nick (lower case) for a private
// conversation, or "" for what the server says while the page is in no room.
const buffers = new Map(); // key -> [li, ...]
const unseen = new Map(); // key -> lines that arrived while another buffer was shown
let view = "";
const privates = new Map(); // nick in lower case -> the nick as last seen, in the order opened
const roomStates = new Map(); // room -> {topic, topicBy, topicAt, flags, operators, voiced} (roles in lower case)
let defaultRoom = "lobby"; // where the page goes first: the server's welcome says
let entering = false; // welcomed: the rooms are joined once the nick is ours
// The first message named us (/nick or /login) and the server is to let us
// in under it: a welcome under a guest name means it refused, and its
// answer (an error) follows.
let introduced = false;
let loginSent = false; // our /login is on its way, or answered: not sent again
let resuming = false; // entering after a reconnect: ask for what was missed
let pendingView = ""; // a room the visitor asked to see: shown once the server has made it current
let lastRooms = []; // the last /rooms answer, drawn again when a badge changes
let roomsBefore = []; // the rooms this page was in before a reconnect
const myNicks = new Set(); // every nick this page has had: its own lines come back under them
let socket = null;
let attempts = 0;
let reconnectTimer = null;
let quitting = false;
let wasConnected = false;
let members = new Set();
// What this page has seen, for resuming without duplicates.
const seen = new Set(); // "room epoch offset", and "room time type nick text"
const positions = new Map(); // room -> {epoch, offset}: the highest offset seen
const ownLines = []; // {room, text} said by this page, not echoed by the server
// Scroll-back: the message ID of each room's oldest line on the page, to ask
// for the lines before it ("" once the server has no older ones), and the
// rooms with a page of older lines asked for and not yet answered.
const oldest = new Map();
const askedOlder = new Set();
const quietAnswers = { members: 0, rooms: 0 }; // answers to our own /who and /rooms, not shown in the log
let unread = 0;
let unreadMarker = null;

// -- the connection --------------------------------------------------------------

function connect() {
  clearTimeout(reconnectTimer);
  setState("connecting", "connecting…");
  // rooms=after-nick: the server lets the page in with its first message,
  // under the nick it names, in no room until it has a nickname of its own,
  // so that nobody ever sees the visitor as guest-N (docs/protocol.md).
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws?rooms=after-nick`;
  const ws = new WebSocket(url);
  socket = ws;
  introduced = false;
  loginSent = false;
  ws.onopen = () => {
    attempts = 0;
    setState("connected", "connected");
    if (me.wantedNick) introduce();
    else askNick();
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

// The first message: the nick we enter under (with the account's password,
// a login to it), so that the welcome greets us by it.
function introduce() {
  introduced = true;
  if (accountPassword !== null) {
    loginSent = true;
    sendLine(`/login ${me.wantedNick} ${accountPassword}`);
  } else sendLine(`/nick ${me.wantedNick}`);
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
    case "topic":
    case "mode":
      roomEvent(event, false);
      break;
    case "room_state":
      roomState(event);
      break;
    case "invite":
      invited(event);
      break;
    case "history":
      // An answer to the scroll-back has "before"; else a replay on entering.
      if ("before" in event) olderLines(event);
      else for (const old of event.events) roomEvent(old, true);
      break;
    case "resume":
      resumed(event);
      break;
    case "private":
      privateMessage(event);
      break;
    case "typing":
      typingNotice(event);
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
        // Our first message was not taken as a name (a /nick before /pass
        // is, and is offered again with it: sendPassword).
        introduced = false;
        loginSent = false;
        askPassword(event.text);
        break;
      }
      if (accountPassword !== null && LOGIN_REFUSED.test(event.text)) {
        loginRefused(event.text);
        break;
      }
      if (entering && /nickname/i.test(event.text)) askNick(); // our nick is not ours now: ask for another
      if (!$("nick-dialog").open || !showNickError(event.text)) note(event.text, "error");
      break;
    default:
      break; // a newer server's event: nothing to show
  }
}

function welcomed(event) {
  if ($("password-dialog").open) $("password-dialog").close();
  resuming = wasConnected === false && positions.size > 0;
  wasConnected = true;
  if (event.default_room) defaultRoom = event.default_room;
  for (const line of event.lines) note(line, "notice");
  // In no room until the nick is ours (a guest name is never seen in a
  // room): then every room is joined (enterRooms). We are in under the nick
  // our first message named (introduce), or as a guest if it was refused
  // (its error follows, and asks for another). Behind a server password the
  // page enters under the nick offered with /pass, and logs in after.
  entering = true;
  if (!isGuest(me.nick)) {
    enterRooms();
    if (accountPassword !== null && !loginSent) {
      loginSent = true;
      sendLine(`/login ${me.wantedNick} ${accountPassword}`);
    }
  } else if (!introduced) {
    // The page logs in first, and takes the nick once that is answered
    // (loggedIn), so that the account's nick is ours when we take it.
    if (me.wantedNick && accountPassword !== null && !loginSent) {
      loginSent = true;
      sendLine(`/login ${me.wantedNick} ${accountPassword}`);
    } else if (me.wantedNick) sendLine(`/nick ${me.wantedNick}`);
    else askNick();
  }
  introduced = false;
  refresh();
}

const isGuest = (nick) => /^guest-[0-9]+$/i.test(nick);

function enterRooms() {
  entering = false;
  closeNick();
  // Back into every room the page was in, the current one last (it becomes
  // current again); on a first visit, into the server's default room.
  const room = me.wantedRoom || defaultRoom;
  const before = roomsBefore.length ? roomsBefore : [room];
  roomsBefore = [];
  for (const r of before) if (r !== room) sendLine(`/join ${r}`);
  sendLine(`/join ${room}`);
  // Each room is resumed once the page is in it again (a resume of a room
  // it is not in yet is refused), as the joins are answered.
  if (resuming) for (const r of before) toResume.add(r);
  resuming = false;
}

function updateYou(you) {
  const oper = Boolean(you.server_operator);
  if (oper !== me.oper) {
    me.oper = oper;
    renderTopic();
  }
  if (you.nick !== me.nick) {
    // The room is told of our new nick, but not we: update our own entry
    // and roles.
    if (members.delete(me.nick)) members.add(you.nick);
    if (me.nick) renameRoles(me.nick, you.nick);
    me.nick = you.nick;
    myNicks.add(you.nick);
    renderMembers();
    renderTopic();
    if (you.nick === me.wantedNick) closeNick();
    if (entering && you.nick && !isGuest(you.nick)) enterRooms();
  }
  if (you.rooms && you.rooms.join() !== me.rooms.join()) {
    // A room left goes with its lines and state; not on the way back after
    // a reconnect, when the page is in no room until it joins them again.
    if (wasConnected) {
      for (const room of me.rooms) {
        if (!you.rooms.includes(room)) {
          buffers.delete(room);
          unseen.delete(room);
          roomStates.delete(room);
        }
      }
    }
    me.rooms = you.rooms;
    renderRooms(lastRooms);
    resumeJoined();
  }
  if (you.room !== me.room) {
    me.room = you.room;
    // After a reconnect the page is in no room at first; the room we were
    // in stays the one we want until we are back in it.
    if (!me.wantedRoom || wasConnected) me.wantedRoom = you.room;
    $("members-room").textContent = you.room;
    members = new Set();
    renderMembers();
    // The view follows the current room, unless a private conversation is
    // shown (and the visitor did not ask for this room).
    if (!view.startsWith("@") || pendingView === you.room) show(you.room);
    refresh();
  }
  if (pendingView && pendingView === me.room) {
    pendingView = "";
    if (view !== me.room) show(me.room);
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

function bufferOf(key) {
  if (!buffers.has(key)) buffers.set(key, []);
  return buffers.get(key);
}

const privateKey = (nick) => `@${nick.toLowerCase()}`;

// Show a buffer: a room's, a private conversation's ("@nick"), or "".
function show(key) {
  // What the server said while the page was in no room (the welcome) goes
  // on top of the first room it shows.
  if (key && !key.startsWith("@") && buffers.get("")?.length) {
    buffers.set(key, [...buffers.get(""), ...bufferOf(key)]);
    buffers.delete("");
  }
  view = key;
  renderTyping();
  unreadMarker?.remove();
  unreadMarker = null;
  log.replaceChildren(...bufferOf(key));
  log.scrollTop = log.scrollHeight;
  unseen.delete(key);
  const peer = key.startsWith("@") ? privates.get(key.slice(1)) : "";
  $("room-name").textContent = peer ? `private: ${peer}` : key ? `#${key}` : "";
  $("input").placeholder = peer ? `private message to ${peer}` : "message, or /help";
  renderTopic();
  renderRooms(lastRooms);
  renderPrivates();
}

function refresh() {
  if (me.room && sendLine("/who")) quietAnswers.members += 1;
  if (sendLine("/rooms")) quietAnswers.rooms += 1;
}

// Whether an event is new to this page; remembers it if so. Seen before? By
// identity, and by content and time for events kept across a restart of the
// server (they come back without an identity).
function firstSight(event) {
  const keys = [`${event.room} ${event.time} ${event.type} ${event.nick} ${event.text}`];
  if (event.offset) keys.push(`${event.room} ${event.epoch} ${event.offset}`);
  if (keys.some((key) => seen.has(key))) return false;
  for (const key of keys) seen.add(key);
  if (seen.size > MAX_SEEN) {
    // Forget the oldest: a replay reaches back a few dozen events, not thousands.
    for (const key of [...seen].slice(0, seen.size - MAX_SEEN / 2)) seen.delete(key);
  }
  return true;
}

function roomEvent(event, replayed) {
  if (!firstSight(event)) return;
  // The first line of a room with an ID is the oldest on the page: the
  // scroll-back asks for what came before it.
  if (event.msgid && !oldest.has(event.room) && (event.type === "chat" || event.type === "action")) {
    oldest.set(event.room, event.msgid);
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
      if (!replayed) stopTyping(room, event.nick);
      line({ time, nick: event.nick, text: event.text, kind: "chat", replayed, key: room });
      break;
    case "action":
      line({ time, nick: event.nick, text: event.text, kind: "action", replayed, key: room });
      break;
    case "join":
      if (shown) {
        members.add(event.nick);
        renderMembers();
      }
      note(`${event.nick} joined`, "event", time, room);
      roomsChanged();
      break;
    case "leave": {
      const state = roomStates.get(room);
      state?.operators.delete(event.nick.toLowerCase());
      state?.voiced.delete(event.nick.toLowerCase());
      if (shown) {
        members.delete(event.nick);
        renderMembers();
      }
      const why = plainLeave(event.reason) ? "" : ` (${event.reason})`;
      note(`${event.nick} left${why}`, "event", time, room);
      if (event.disconnected && privates.has(event.nick.toLowerCase()) && !replayed) {
        note(`${event.nick} left the chat${why}`, "event", time, privateKey(event.nick));
      }
      roomsChanged();
      break;
    }
    case "nick":
      renamed(event.nick, event.new_nick);
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
    case "topic":
      topicChanged(event);
      note(
        event.topic ? `${event.nick} set the topic: ${event.topic}` : `${event.nick} cleared the topic`,
        "event",
        time,
        room,
      );
      break;
    case "mode":
      modesChanged(event);
      note(`${event.nick} set mode ${[event.modes, ...event.arguments].join(" ")}`, "event", time, room);
      break;
  }
}

// -- who is typing (IRCv3 +typing, from IRC clients) ------------------------------

// An "active" notice holds for 6 s unless renewed (IRCv3 typing: clients
// repeat it every 3 s); "paused" and "done" end it, and so does a line.
const TYPING_SHOWN = 6000; // ms
const typists = new Map(); // "room nick" -> timer

function typingNotice(event) {
  if (event.state === "active") {
    clearTimeout(typists.get(`${event.room} ${event.nick}`));
    typists.set(
      `${event.room} ${event.nick}`,
      setTimeout(() => stopTyping(event.room, event.nick), TYPING_SHOWN),
    );
    renderTyping();
  } else {
    stopTyping(event.room, event.nick);
  }
}

function stopTyping(room, nick) {
  const key = `${room} ${nick}`;
  if (!typists.has(key)) return;
  clearTimeout(typists.get(key));
  typists.delete(key);
  renderTyping();
}

function renderTyping() {
  const nicks = [...typists.keys()].filter((key) => key.startsWith(`${view} `)).map((key) => key.slice(view.length + 1));
  const shown = $("typing");
  shown.hidden = nicks.length === 0;
  shown.textContent =
    nicks.length === 0 ? "" : nicks.length === 1 ? `${nicks[0]} is typing…` : `${nicks.join(", ")} are typing…`;
}

// -- a room's topic, modes and operators -----------------------------------------

function roomState(event) {
  roomStates.set(event.room, {
    topic: event.topic,
    topicBy: event.topic_by,
    topicAt: event.topic_at,
    flags: new Set(event.modes.replace(/[^a-z]/g, "")),
    operators: new Set(event.operators.map((nick) => nick.toLowerCase())),
    voiced: new Set(event.voiced.map((nick) => nick.toLowerCase())),
  });
  if (event.room === view) renderTopic();
  if (event.room === me.room) renderMembers();
}

function topicChanged(event) {
  const state = roomStates.get(event.room);
  if (!state) return;
  Object.assign(state, { topic: event.topic, topicBy: event.nick, topicAt: event.time });
  if (event.room === view) renderTopic();
}

// Modes as the server applies them: o, v, b, e and k have an argument,
// l only when set (docs/protocol.md).
function modesChanged(event) {
  const state = roomStates.get(event.room);
  if (!state) return;
  const args = [...event.arguments];
  let adding = true;
  for (const letter of event.modes) {
    if (letter === "+" || letter === "-") {
      adding = letter === "+";
      continue;
    }
    const argument = "ovbek".includes(letter) || (letter === "l" && adding) ? args.shift() || "" : "";
    const roles = letter === "o" ? state.operators : letter === "v" ? state.voiced : null;
    if (roles) roles[adding ? "add" : "delete"](argument.toLowerCase());
    else if ("imnst".includes(letter)) state.flags[adding ? "add" : "delete"](letter);
  }
  if (event.room === view) renderTopic();
  if (event.room === me.room) renderMembers();
}

// Someone in one of our rooms is now known as someone else: their roles,
// and a private conversation with them, follow.
function renamed(old, now) {
  renameRoles(old, now);
  const from = privateKey(old);
  const to = privateKey(now);
  if (!privates.has(old.toLowerCase())) return;
  if (from !== to) {
    bufferOf(to).push(...bufferOf(from));
    buffers.delete(from);
    const count = (unseen.get(to) || 0) + (unseen.get(from) || 0);
    unseen.delete(from);
    if (count) unseen.set(to, count);
    privates.delete(old.toLowerCase());
  }
  privates.set(now.toLowerCase(), now);
  note(`${old} is now known as ${now}`, "event", new Date(), to);
  if (view === from) show(to);
  else renderPrivates();
}

function renameRoles(old, now) {
  for (const state of roomStates.values()) {
    for (const roles of [state.operators, state.voiced]) {
      if (roles.delete(old.toLowerCase())) roles.add(now.toLowerCase());
    }
  }
}

function canSetTopic(room) {
  const state = roomStates.get(room);
  if (!state) return false;
  return !state.flags.has("t") || state.operators.has(me.nick.toLowerCase()) || me.oper;
}

function renderTopic() {
  const bar = $("topic");
  const text = $("topic-text");
  const peer = view.startsWith("@") ? privates.get(view.slice(1)) : "";
  bar.hidden = !view;
  if (!view) return;
  if (!$("topic-input").hidden && bar.dataset.room === view) return; // being edited: left alone
  closeTopicEditor();
  bar.dataset.room = view;
  if (peer) {
    text.textContent = `private conversation with ${peer}: only you two see it`;
    bar.dataset.editable = "false";
    text.setAttribute("aria-disabled", "true");
    bar.classList.remove("empty");
    text.title = "";
    return;
  }
  const state = roomStates.get(view);
  const editable = canSetTopic(view);
  bar.dataset.editable = String(editable);
  text.setAttribute("aria-disabled", String(!editable));
  bar.classList.toggle("empty", !state?.topic);
  if (state?.topic) {
    text.textContent = state.topic;
    const when = state.topicAt ? ` at ${new Date(state.topicAt * 1000).toLocaleString()}` : "";
    text.title = `set by ${state.topicBy}${when}` + (editable ? "; click to change it" : "");
  } else {
    text.textContent = editable ? "no topic: click to set one" : "no topic";
    text.title = "";
  }
  if (!editable && state?.flags.has("t")) text.title += `${text.title ? "; " : ""}only operators of ${view} set its topic`;
}

function openTopicEditor() {
  if ($("topic").dataset.editable !== "true" || !roomStates.has(view)) return;
  const input = $("topic-input");
  input.value = roomStates.get(view).topic;
  $("topic-text").hidden = true;
  input.hidden = false;
  input.focus();
}

function closeTopicEditor() {
  $("topic-input").hidden = true;
  $("topic-text").hidden = false;
}

// Done editing: shown as the server has it now (it may have changed meanwhile).
function stopEditingTopic() {
  closeTopicEditor();
  renderTopic();
}

$("topic-text").addEventListener("click", openTopicEditor);
$("topic-text").addEventListener("keydown", (key) => {
  if (key.key === "Enter" || key.key === " ") {
    key.preventDefault();
    openTopicEditor();
  }
});
$("topic-input").addEventListener("keydown", (key) => {
  if (key.key === "Escape") {
    stopEditingTopic();
  } else if (key.key === "Enter") {
    key.preventDefault();
    const room = $("topic").dataset.room;
    const topic = $("topic-input").value.trim();
    stopEditingTopic();
    if (room !== me.room || topic === (roomStates.get(room)?.topic || "")) return;
    // The topic shown changes when the server says it did (to everyone).
    sendLine(topic ? `/topic ${topic}` : "/topic --clear");
  }
});
$("topic-input").addEventListener("blur", () => {
  if (!$("topic-input").hidden) stopEditingTopic();
});

function invited(event) {
  const item = entry("notice", new Date());
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = `${event.by} invites you to ${event.room} `;
  const join = document.createElement("button");
  join.type = "button";
  join.className = "inline";
  join.textContent = `join ${event.room}`;
  join.onclick = () => joinRoom(event.room);
  body.append(join);
  item.append(body);
  add(item, true);
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

// -- scroll-back -------------------------------------------------------------------

// Near the top of a room's log: ask for the lines before its oldest one.
function askOlder() {
  const room = view;
  const before = oldest.get(room);
  if (!room || room.startsWith("@") || !before || askedOlder.has(room) || !socket) return;
  askedOlder.add(room);
  socket.send(JSON.stringify({ type: "history", room, before, limit: HISTORY_PAGE }));
}

log.addEventListener("scroll", () => {
  if (log.scrollTop < NEAR_TOP) askOlder();
});

// Older lines, put above the room's others without moving what is shown.
function olderLines(event) {
  const room = event.room;
  askedOlder.delete(room);
  const items = [];
  for (const old of event.events) {
    if ((old.type !== "chat" && old.type !== "action") || !firstSight(old)) continue;
    const time = new Date(old.time * 1000);
    items.push(lineItem({ time, nick: old.nick, text: old.text, kind: old.type, replayed: true }));
  }
  const first = event.events.find((old) => old.msgid);
  if (first) oldest.set(room, first.msgid);
  if (event.complete || !first) {
    oldest.set(room, "");
    const time = event.events.length ? new Date(event.events[0].time * 1000) : new Date();
    items.unshift(noteItem("nothing older is kept", "notice", time));
  }
  bufferOf(room).unshift(...items);
  if (view !== room) return;
  const fromBottom = log.scrollHeight - log.scrollTop;
  log.prepend(...items);
  log.scrollTop = log.scrollHeight - fromBottom;
  // Still at the top (a short log, or a quick scroll): the next page.
  if (log.scrollTop < NEAR_TOP) askOlder();
}

function resumed(event) {
  for (const old of event.events) roomEvent(old, true);
  if (!event.complete) {
    note(`you may have missed messages while you were disconnected (${event.reason})`, "missed");
  }
}

// A private message, to or from someone: into the buffer of the
// conversation with them (opened if it was not), never a room's.
function privateMessage(event) {
  const peer = event.echo ? event.to : event.from;
  line({ time: new Date(), nick: event.from, text: event.text, kind: "private", key: openPrivate(peer) });
}

function openPrivate(nick) {
  const key = privateKey(nick);
  privates.set(nick.toLowerCase(), nick);
  bufferOf(key);
  renderPrivates();
  return key;
}

function closePrivate(key) {
  privates.delete(key.slice(1));
  buffers.delete(key);
  unseen.delete(key);
  if (view === key) show(me.room);
  else renderPrivates();
}

// Shown at once, with the input ready (a click on a nick, /query).
function talkTo(nick) {
  show(openPrivate(nick));
  $("input").focus();
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

function line({ time, nick, text, kind, replayed = false, key = view }) {
  add(lineItem({ time, nick, text, kind, replayed }), !replayed && nick !== me.nick, key);
}

function lineItem({ time, nick, text, kind, replayed }) {
  const item = entry(kind, time);
  if (replayed) item.classList.add("replayed");
  if (nick === me.nick) item.classList.add("own");
  const who = document.createElement("span");
  who.className = `nick ${nickColor(nick)}`;
  who.textContent = kind === "action" ? `* ${nick}` : nick;
  const body = document.createElement("span");
  body.className = "text";
  appendLinkified(body, text);
  item.append(who, " ", body);
  return item;
}

function note(text, kind, time = new Date(), key = view) {
  add(noteItem(text, kind, time), false, key);
}

function noteItem(text, kind, time) {
  const item = entry(kind, time);
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  item.append(body);
  return item;
}

// A stable colour per nick, as The Lounge and WeeChat give: a hash of the
// nick (djb2, of its lower-case form, as nicks ignore case) picks one of
// NICK_COLORS classes, each readable on the page's background in the light
// and the dark scheme (style.css; tests/test_web.py checks the contrast).
const NICK_COLORS = 16;

function nickColor(nick) {
  let hash = 5381;
  for (const char of nick.toLowerCase()) hash = ((hash * 33) ^ char.codePointAt(0)) >>> 0;
  return `nick-color-${hash % NICK_COLORS}`;
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

function add(item, countsAsUnread, key = view) {
  const buffer = bufferOf(key);
  buffer.push(item);
  while (buffer.length > MAX_LOG) buffer.shift().remove();
  if (key !== view) {
    if (countsAsUnread) {
      unseen.set(key, (unseen.get(key) || 0) + 1);
      if (key.startsWith("@")) renderPrivates();
      else renderRooms(lastRooms);
      if (key.startsWith("@") && document.hidden) {
        unread += 1; // a private message counts in the tab's title wherever it is
        document.title = `(${unread}) chatcore`;
      }
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
      item.classList.add(nickColor(nick));
      const state = roomStates.get(me.room);
      if (state?.operators.has(nick.toLowerCase())) item.classList.add("op");
      else if (state?.voiced.has(nick.toLowerCase())) item.classList.add("voiced");
      if (nick === me.nick) {
        item.classList.add("own");
      } else {
        item.title = `talk to ${nick} privately`;
        item.onclick = () => talkTo(nick);
      }
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
      if (room === view) item.classList.add("shown");
      button.onclick = () => joinRoom(room);
      item.append(button);
      if (room === me.room) item.classList.add("current");
      if (me.rooms.includes(room)) {
        item.classList.add("joined");
        const count = unseen.get(room) || 0;
        if (count) item.append(" ", unseenBadge(count, `${count} new in ${room}`));
        item.append(" ", leaveButton(`leave ${room}`, () => sendLine(`/part ${room}`)));
      }
      return item;
    }),
  );
}

// The count of lines not seen yet in a room or conversation of the side list.
function unseenBadge(count, title) {
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.textContent = String(count);
  badge.title = title;
  return badge;
}

// The "×" that leaves a room or closes a conversation.
function leaveButton(label, onclick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "leave";
  button.textContent = "×";
  button.title = label;
  button.setAttribute("aria-label", label);
  button.onclick = onclick;
  return button;
}

function joinRoom(room) {
  if (!room) return;
  if (room === me.room) {
    show(room); // from a private conversation back to the current room
    return;
  }
  // /join of a room the page is in already only makes it current: a switch.
  pendingView = room;
  sendLine(`/join ${room}`);
}

function renderPrivates() {
  const keys = [...privates.keys()].map((lower) => `@${lower}`);
  $("privates-section").hidden = keys.length === 0;
  $("privates").replaceChildren(
    ...keys.map((key) => {
      const nick = privates.get(key.slice(1));
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = `peer ${nickColor(nick)}`;
      button.textContent = nick;
      button.title = `private conversation with ${nick}`;
      button.onclick = () => show(key);
      item.append(button);
      if (key === view) item.classList.add("current", "shown");
      const count = unseen.get(key) || 0;
      if (count) item.append(" ", unseenBadge(count, `${count} new from ${nick}`));
      item.append(" ", leaveButton(`close the conversation with ${nick}`, () => closePrivate(key)));
      return item;
    }),
  );
}

// -- the server password ---------------------------------------------------------

// Kept in this page's memory only (never in storage), to enter again after a
// reconnect without asking.
let serverPassword = null;

function askPassword(text) {
  const wrong = text.startsWith("wrong password");
  if (serverPassword !== null && !wrong) {
    sendPassword(serverPassword);
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
  sendPassword(password);
});

// The server lets us in under a nick offered before /pass: our first
// message offered it, unless it was a login (refused before the password).
function sendPassword(password) {
  if (me.wantedNick && accountPassword !== null) sendLine(`/nick ${me.wantedNick}`);
  sendLine(`/pass ${password}`);
}

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
  loginSent = false;
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
  if (password) accountPassword = password;
  if (!socket) {
    connect(); // the page connects once it knows the nick to enter under
    return;
  }
  if (!wasConnected) {
    if (socket.readyState === WebSocket.OPEN) introduce(); // not in yet: the nick is our first message
    return;
  }
  if (password) {
    loginSent = true;
    sendLine(`/login ${nick} ${password}`); // the nick follows the answer (loggedIn)
  } else if (nick === me.nick) closeNick();
  else sendLine(`/nick ${nick}`);
});

// -- typing ----------------------------------------------------------------------

const NICK_PATTERN = /^[A-Za-z0-9_-]{1,32}$/;

$("input-form").addEventListener("submit", (submit) => {
  submit.preventDefault();
  const input = $("input");
  const text = input.value.trim();
  if (!text) return;
  const command = text.startsWith("/") && !text.startsWith("//") ? text.slice(1).split(/\s+/)[0].toLowerCase() : "";
  const words = text.split(/\s+/);
  const peer = view.startsWith("@") ? privates.get(view.slice(1)) : "";
  if (command === "query") {
    // The page's own command (WeeChat's): open a private conversation.
    const [, nick = "", said = ""] = text.match(/^\/\S+\s*(\S*)\s*(.*)$/);
    if (!NICK_PATTERN.test(nick)) {
      note("usage: /query NICK [TEXT] (a nick: 1 to 32 letters, digits, _ or -)", "error");
      return;
    }
    talkTo(nick);
    input.value = "";
    if (said) sendLine(`/msg ${nick} ${said}`);
    return;
  }
  if (peer && (command === "me" || !command)) {
    if (command === "me") {
      note("/me is for rooms: a private conversation has no actions", "error");
      return;
    }
    // Typed in a private conversation: a private message to that nick,
    // shown when the server echoes it.
    if (!sendLine(`/msg ${peer} ${text.startsWith("//") ? text.slice(1) : text}`)) return;
    input.value = "";
    return;
  }
  if (command === "nick") {
    const wanted = words[1] || "";
    me.wantedNick = wanted;
    localStorage.setItem("chatcore.nick", wanted);
  } else if (command === "quit") {
    quitting = true;
  } else if (command === "join" && words[1]) {
    pendingView = words[1].toLowerCase(); // shown once the server has made it current
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

// The nick first: the page connects once it knows the name to enter under.
if (me.wantedNick) connect();
else {
  setState("idle", "pick a nickname to connect");
  askNick();
}
