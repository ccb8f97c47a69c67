"""Programs that talk to a chatcore server, not part of it: the terminal
client (``chatcore client``)."""
