// Client-disconnect detection for non-streamed requests. cpp-httplib 0.11.4 neither exposes a
// request's socket nor reports a closed peer until a write fails (is_connection_closed arrived in
// 0.18.5), so a non-streamed generation would run to max_tokens for nobody (serving.md §2.3).
// PeerWatch finds the accepted socket by its address pair among this process's descriptors and
// peeks at it without consuming anything.
#pragma once

#include <sys/socket.h>

#include <optional>
#include <string>

namespace kimi::server {

class PeerWatch {
 public:
  // The connected socket whose peer is remote_addr:remote_port and whose local port is local_port.
  static std::optional<PeerWatch> find(const std::string& remote_addr, int remote_port, int local_port);
  // True once the peer has closed its side (EOF or error) or the descriptor now belongs to
  // another connection. Bytes a pipelining client sent ahead do not count as closed.
  bool closed() const;

 private:
  PeerWatch(int fd, const sockaddr_storage& peer, socklen_t len) : fd_(fd), peer_(peer), peer_len_(len) {}
  int fd_;
  sockaddr_storage peer_;
  socklen_t peer_len_;
};

}  // namespace kimi::server
