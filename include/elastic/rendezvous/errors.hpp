// Rendezvous failures, named as PyTorch names them
// (torch.distributed.elastic.rendezvous.api): the launcher prints the class name.
#pragma once

#include <stdexcept>
#include <string>

namespace elastic::rendezvous {

class RendezvousError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
  virtual const char* class_name() const { return "RendezvousError"; }
};

// The rendezvous is closed: the job ended, a node with its id may not join.
class RendezvousClosedError : public RendezvousError {
 public:
  RendezvousClosedError() : RendezvousError("The rendezvous is closed") {}
  explicit RendezvousClosedError(const std::string& what) : RendezvousError(what) {}
  const char* class_name() const override { return "RendezvousClosedError"; }
};

// No complete round by join_timeout.
class RendezvousTimeoutError : public RendezvousError {
 public:
  using RendezvousError::RendezvousError;
  const char* class_name() const override { return "RendezvousTimeoutError"; }
};

// The store cannot be reached or stopped answering.
class RendezvousConnectionError : public RendezvousError {
 public:
  using RendezvousError::RendezvousError;
  const char* class_name() const override { return "RendezvousConnectionError"; }
};

// The stored state is not one this implementation wrote (corrupt or foreign).
class RendezvousStateError : public RendezvousError {
 public:
  using RendezvousError::RendezvousError;
  const char* class_name() const override { return "RendezvousStateError"; }
};

// A --rdzv-conf value that cannot be used (the launcher's usage error).
class RendezvousConfigError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

}  // namespace elastic::rendezvous
