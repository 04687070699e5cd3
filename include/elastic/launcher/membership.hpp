// What a rendezvous backend decides for the attempt loop (attempt_loop.hpp): this
// node's place in each round of the job, and when a round ends for reasons outside
// its own workers. The static backend has one round for the whole job
// (static_membership.hpp); c10d and etcd have as many as membership changes make
// (dynamic_membership.hpp).
#pragma once

#include <chrono>
#include <elastic/launcher/job_failures.hpp>
#include <elastic/launcher/port.hpp>
#include <elastic/launcher/signals.hpp>
#include <optional>
#include <string>
#include <vector>

namespace elastic::launcher {

// This node's place in one round: what its workers' environment is made of.
struct NodeAssignment {
  int round = 0;
  int group_rank = 0;  // this node's rank among the round's nodes
  int group_world_size = 1;
  int rank_offset = 0;  // the global rank of this node's local rank 0
  int world_size = 1;   // workers of every node in the round
  std::string master_addr;
  int master_port = 0;
  // Held for as long as the round's workers run where this node hosts rank 0 and
  // chose the port (see port.hpp); empty otherwise.
  PortReservation master_port_hold;
};

class Membership {
 public:
  virtual ~Membership() = default;
  // Blocks until this node has a place in the next round. nullopt: the round fell
  // apart before its workers started (the loop asks again). Throws SignalException
  // for a handled signal and rendezvous::RendezvousError when no round can be had.
  virtual std::optional<NodeAssignment> join(int restart_count, SignalReader& signals) = 0;
  // How long the loop may wait on its workers before it calls round_changed().
  virtual std::chrono::milliseconds poll_interval() const = 0;
  // Why the running round must end although no worker failed (nodes joined or
  // left), or nullopt. Throws rendezvous::RendezvousError when this node lost the job.
  virtual std::optional<std::string> round_changed() = 0;
  // Tells the job's other nodes that a worker of this node failed in the running
  // round (job_failures.hpp). Problems are logged, never thrown: the failure is
  // reported here all the same.
  virtual void publish_failure(const FailureReport& report) { (void)report; }
  // The failures the other nodes published in the running round (polled with
  // round_changed()). Problems are logged, never thrown.
  virtual std::vector<FailureReport> job_failures() { return {}; }
  // The job ended (its workers succeeded, or failed with no restart left; not a
  // signal): leave the job so that the other nodes can end too.
  virtual void finish() = 0;
};

}  // namespace elastic::launcher
