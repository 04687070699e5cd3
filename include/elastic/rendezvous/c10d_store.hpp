// The c10d backend's store: one agent serves a key-value store over TCP
// (C10dStoreServer), every agent is a client session of it (C10dStoreClient).
// Standalone asio (Debian's libasio-dev, header-only; ASIO_STANDALONE).
//
// One TCP connection is one session: closing it drops the session's ephemeral keys
// at once; so do keep-alives missing for the TTL, timed on the server's clock.
//
// Parts: c10d/wire.hpp (the protocol), c10d/server.hpp (acceptor, connection
// manager, connection, frame parser, request handler over a KeyValueTable),
// c10d/client.hpp.
#pragma once

#include <elastic/rendezvous/c10d/client.hpp>
#include <elastic/rendezvous/c10d/server.hpp>
#include <elastic/rendezvous/c10d/wire.hpp>
