// chatcore's admin page (docs/api.md): rooms and their members, rates and
// the server's counts, with kick, ban and mute, all through the HTTP API
// this page is served beside.
//
// The token: asked for once, kept in sessionStorage (this tab only, gone
// when it closes) and sent as "Authorization: Bearer". Never in a URL: URLs
// end up in server and proxy logs, the browser's history and Referer
// headers. Never in a cookie: a browser attaches cookies to the requests
// other sites' pages make to this server (CSRF), so any page the admin
// visited could kick and ban in their name; a header this page's own
// script sets is sent by this page alone.
//
// Everything shown comes from the server and is put in the page as text
// (textContent), never as markup.

const TOKEN_KEY = "chatcore-admin-token";
const POLL_MS = 2000;

const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem(TOKEN_KEY);
let timer = null;
let previous = null; // the last stats and when they came: for the rates

class ApiError extends Error {
  constructor(status, text) {
    super(text);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token}` };
  const init = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) {
    throw new ApiError(response.status, data.error || `HTTP ${response.status}`);
  }
  return data;
}

function element(tag, text, className) {
  const made = document.createElement(tag);
  if (text !== undefined) made.textContent = text;
  if (className) made.className = className;
  return made;
}

function setState(text, kind) {
  const state = $("state");
  state.textContent = text;
  state.dataset.kind = kind || "";
}

// -- signing in and out ---------------------------------------------------------

function signedIn() {
  $("sign-in").hidden = true;
  $("panel").hidden = false;
  $("sign-out").hidden = false;
  previous = null;
  refresh();
}

function signOut(why) {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(timer);
  $("panel").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("token").value = "";
  setState(why || "signed out", why ? "error" : "");
  $("token").focus();
}

$("sign-in").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  signedIn();
});

$("sign-out").addEventListener("click", () => signOut());

// -- what the server says -------------------------------------------------------

async function refresh() {
  clearTimeout(timer);
  try {
    const [stats, rooms, connections] = await Promise.all([
      api("GET", "/api/stats"),
      api("GET", "/api/rooms"),
      api("GET", "/api/connections"),
    ]);
    showCounts(stats);
    showRooms(rooms.rooms, connections.connections);
    showConnections(connections.connections);
    setState(`live, ${new Date().toLocaleTimeString()}`, "ok");
  } catch (error) {
    if (error.status === 401 || error.status === 403) {
      signOut(error.status === 403 ? "this token lacks the admin scope" : "unknown token");
      return;
    }
    setState(`cannot reach the server: ${error.message}`, "error");
  }
  timer = setTimeout(refresh, POLL_MS);
}

function perSecond(now, key, at) {
  if (!previous || at <= previous.at) return "…";
  const rate = (now[key] - previous.stats[key]) / ((at - previous.at) / 1000);
  return rate.toFixed(rate < 10 ? 1 : 0);
}

function showCounts(stats) {
  const at = Date.now();
  const refusals = Object.values(stats.refusals).reduce((sum, count) => sum + count, 0);
  const items = [
    ["connections", stats.connections],
    ["rooms", stats.rooms],
    ["members", stats.memberships],
    ["lines/s", perSecond(stats, "messages", at)],
    ["deliveries/s", perSecond(stats, "deliveries", at)],
    ["slow consumers", stats.disconnects.slow_consumer || 0],
    ["refusals", refusals],
  ];
  previous = { stats, at };
  const list = $("counts");
  list.replaceChildren();
  for (const [name, value] of items) {
    const item = element("div", undefined, "count");
    item.dataset.count = name;
    item.append(element("dt", name), element("dd", String(value)));
    list.append(item);
  }
  const causes = Object.entries(stats.refusals).map(([cause, count]) => `${cause}: ${count}`);
  list.querySelector('[data-count="refusals"]').title = causes.join(", ") || "none";
}

function button(label, action, target, title) {
  const made = element("button", label, `action ${action}`);
  made.type = "button";
  made.dataset.action = action;
  Object.assign(made.dataset, target);
  made.title = title;
  return made;
}

function showRooms(rooms, connections) {
  const box = $("rooms");
  box.replaceChildren();
  if (!rooms.length) {
    box.append(element("p", "No rooms: a room exists while someone is in it.", "empty"));
    return;
  }
  for (const { room, members } of rooms) {
    const card = element("article", undefined, "room");
    card.dataset.room = room;
    const here = connections.filter((c) => c.rooms.includes(room)).sort((a, b) => a.nick.localeCompare(b.nick));
    card.append(element("h3", `${room} (${members})`));
    const list = element("ul", undefined, "members");
    for (const member of here) {
      const row = element("li", undefined, "member");
      row.dataset.nick = member.nick;
      row.append(element("span", member.nick, "nick"));
      const buttons = element("span", undefined, "buttons");
      buttons.append(
        button("kick", "kick", { room, nick: member.nick }, `put ${member.nick} out of ${room}`),
        button("ban", "ban", { room, nick: member.nick }, `ban ${member.nick} from ${room}`),
        button("mute", "mute", { nick: member.nick }, `mute ${member.nick} everywhere`),
      );
      row.append(buttons);
      list.append(row);
    }
    card.append(list);
    if (members > here.length) {
      card.append(element("p", `and ${members - here.length} on other servers`, "elsewhere"));
    }
    box.append(card);
  }
}

function ago(seconds) {
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function bytes(count) {
  if (count < 1024) return `${count} B`;
  if (count < 1048576) return `${(count / 1024).toFixed(1)} KB`;
  return `${(count / 1048576).toFixed(1)} MB`;
}

function showConnections(connections) {
  const body = $("connections");
  body.replaceChildren();
  const now = Date.now() / 1000;
  for (const c of connections) {
    const row = element("tr");
    row.dataset.id = String(c.id);
    const cells = [
      c.nick || (c.protocol === "api" ? "(API client)" : "(not in yet)"),
      c.address,
      c.protocol + (c.tls ? " (TLS)" : ""),
      c.rooms.join(", "),
      ago(now - c.connected),
      `${bytes(c.bytes_in)} / ${bytes(c.bytes_out)}`,
      c.queued ? `${c.queued} (${bytes(c.queued_bytes)})` : "0",
    ];
    for (const text of cells) row.append(element("td", text));
    // The flex box inside the cell: a cell that is a flex box loses its table borders.
    const actions = element("span", undefined, "buttons");
    actions.append(button("disconnect", "disconnect", { id: String(c.id) }, "end this connection"));
    if (c.nick) actions.append(button("ban address", "server-ban", { nick: c.nick }, `ban ${c.address}`));
    const cell = element("td");
    cell.append(actions);
    row.append(cell);
    body.append(row);
  }
}

// -- actions --------------------------------------------------------------------

function reason() {
  const text = $("reason").value.trim();
  return text ? { reason: text } : {};
}

const ACTIONS = {
  kick: ({ room, nick }) => api("POST", `/api/rooms/${room}/kicks`, { nick, ...reason() }),
  ban: ({ room, nick }) => api("POST", `/api/rooms/${room}/bans`, { mask: nick, ...reason() }),
  mute: ({ nick }) => api("POST", "/api/mutes", { nick, duration: Number($("mute-for").value), ...reason() }),
  disconnect: ({ id }) => {
    const text = $("reason").value.trim();
    return api("DELETE", `/api/connections/${id}` + (text ? `?reason=${encodeURIComponent(text)}` : ""));
  },
  "server-ban": ({ nick }) => api("POST", "/api/bans", { target: nick, ...reason() }),
};

document.addEventListener("click", async (event) => {
  const target = event.target.closest("button.action");
  if (!target) return;
  const outcome = $("outcome");
  target.disabled = true;
  try {
    const done = await ACTIONS[target.dataset.action](target.dataset);
    outcome.textContent = done.done + (done.warning ? ` (${done.warning})` : "");
    outcome.dataset.kind = done.warning ? "warn" : "ok";
  } catch (error) {
    outcome.textContent = error.message;
    outcome.dataset.kind = "error";
  } finally {
    target.disabled = false;
  }
  refresh();
});

if (token) {
  signedIn();
} else {
  $("token").focus();
}
