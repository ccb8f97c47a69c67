'use strict';
// irc-framework, the IRC library of Kiwi IRC, over IRC over WebSocket: the
// way Kiwi IRC connects to an IRC server's WebSocket (its "direct" mode).
// Driven by tests/test_irc_websocket.py:
//
//     node client.js PORT NICK
//
// Registers as NICK, joins #lobby, says a line there, and prints what
// happens as JSON lines on stdout; quits when someone says "bye".
const IRC = require('irc-framework');
const websocket = require('irc-framework/src/transports/websocket');

const [port, nick] = process.argv.slice(2);
const client = new IRC.Client({
    host: '127.0.0.1',
    port: Number(port),
    nick,
    username: nick,
    gecos: 'irc-framework over WebSocket',
    transport: websocket,
    auto_reconnect: false,
});
const tell = (event) => process.stdout.write(JSON.stringify(event) + '\n');

client.on('registered', () => {
    tell({ event: 'registered', nick: client.user.nick });
    client.join('#lobby');
});
client.on('join', (event) => {
    if (event.nick === client.user.nick) {
        tell({ event: 'joined', channel: event.channel });
        client.say('#lobby', 'hello from irc-framework');
    }
});
client.on('privmsg', (event) => {
    tell({ event: 'privmsg', nick: event.nick, target: event.target, message: event.message });
    if (event.message === 'bye') {
        client.quit('done');
    }
});
client.on('close', () => {
    tell({ event: 'close' });
    process.exit(0);
});
client.connect();
