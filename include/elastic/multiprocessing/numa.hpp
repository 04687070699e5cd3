// NUMA binding of workers (--numa-binding): each local rank runs on CPUs near the GPU of
// the same index, chosen from the sysfs topology as newest PyTorch chooses them
// (torch/numa/binding.py), and set with sched_setaffinity instead of wrapping in numactl.
//   node          all allowed CPUs of the GPU's NUMA node
//   socket        all allowed CPUs of the NUMA nodes on the GPU's socket
//   exclusive     the GPU's share of the node's physical cores (the node's GPUs split them
//                 evenly, lower GPU indices taking one extra core when they do not divide)
//   core-complex  one group of CPUs sharing the last-level cache, a different one per GPU
//                 of the node when there are enough
#pragma once

#include <dirent.h>
#include <sched.h>
#include <sys/types.h>

#include <algorithm>
#include <cstdio>
#include <elastic/multiprocessing/gpus.hpp>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace elastic::multiprocessing::numa {

enum class Mode { node, socket, exclusive, core_complex };

inline std::optional<Mode> parse_mode(const std::string& name) {
  if (name == "node") return Mode::node;
  if (name == "socket") return Mode::socket;
  if (name == "exclusive") return Mode::exclusive;
  if (name == "core-complex") return Mode::core_complex;
  return std::nullopt;
}

// A binding that cannot be made: no GPU for a rank, unreadable topology, no CPU left.
class NumaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// "0-2,4,6-7" <-> {0, 1, 2, 4, 6, 7}, as sysfs and numactl write CPU lists.
inline std::set<int> parse_ranges(const std::string& text) {
  std::set<int> result;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t comma = text.find(',', start);
    std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    item.erase(0, item.find_first_not_of(" \n\t"));
    item.erase(item.find_last_not_of(" \n\t") + 1);
    if (!item.empty()) {
      auto dash = item.find('-');
      int first = std::stoi(item.substr(0, dash));
      int last = dash == std::string::npos ? first : std::stoi(item.substr(dash + 1));
      for (int cpu = first; cpu <= last; ++cpu) result.insert(cpu);
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return result;
}
inline std::string format_ranges(const std::set<int>& cpus) {
  std::string out;
  for (auto it = cpus.begin(); it != cpus.end();) {
    int first = *it, last = *it;
    while (++it != cpus.end() && *it == last + 1) last = *it;
    out += (out.empty() ? "" : ",") + std::to_string(first) + (first == last ? "" : "-" + std::to_string(last));
  }
  return out;
}

// The machine as binding sees it: a sysfs tree, the CPUs this process may use, and the
// NUMA node of each GPU (by CUDA index).
struct Topology {
  std::string sys_root = "/sys";
  std::set<int> allowed_cpus;
  std::vector<int> gpu_numa_nodes;

  std::string read(const std::string& path) const {
    std::ifstream in(sys_root + path);
    if (!in) throw NumaError("cannot read " + sys_root + path);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  int read_int(const std::string& path) const {
    try {
      return std::stoi(read(path));
    } catch (const std::logic_error&) {
      throw NumaError("not a number in " + sys_root + path);
    }
  }
  std::set<int> allowed_cpus_of_node(int node) const {
    std::set<int> result;
    for (int cpu : parse_ranges(read("/devices/system/node/node" + std::to_string(node) + "/cpulist")))
      if (allowed_cpus.count(cpu)) result.insert(cpu);
    return result;
  }
  int socket_of_cpu(int cpu) const {
    return read_int("/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/physical_package_id");
  }
  int socket_of_node(int node) const {
    auto cpus = allowed_cpus_of_node(node);
    if (cpus.empty()) return -1;
    return socket_of_cpu(*cpus.begin());
  }
  std::set<int> core_siblings(int cpu) const {
    return parse_ranges(read("/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/thread_siblings_list"));
  }
  // The CPUs sharing `cpu`'s highest-level data or unified cache.
  std::set<int> last_level_cache_sharers(int cpu) const {
    const std::string dir = "/devices/system/cpu/cpu" + std::to_string(cpu) + "/cache";
    int best_level = -1;
    std::set<int> sharers = {cpu};
    std::vector<std::string> entries;
    if (DIR* d = ::opendir((sys_root + dir).c_str())) {
      while (dirent* e = ::readdir(d)) entries.emplace_back(e->d_name);
      ::closedir(d);
    }
    for (const auto& entry : entries) {
      if (entry.rfind("index", 0) != 0 || !detail::all_decimal(entry.substr(5))) continue;
      std::string type = read(dir + "/" + entry + "/type");
      type.erase(type.find_last_not_of(" \n") + 1);
      if (type != "Unified" && type != "Data") continue;
      int level = read_int(dir + "/" + entry + "/level");
      if (level <= best_level) continue;
      best_level = level;
      sharers = parse_ranges(read(dir + "/" + entry + "/shared_cpu_list"));
    }
    return sharers;
  }
  std::set<int> nodes() const { return parse_ranges(read("/devices/system/node/possible")); }
};

// The CPUs for the worker that uses GPU `gpu` (its CUDA index).
inline std::set<int> cpus_for_gpu(const Topology& topology, Mode mode, int gpu) {
  if (gpu < 0 || gpu >= static_cast<int>(topology.gpu_numa_nodes.size()))
    throw NumaError("no GPU " + std::to_string(gpu) + " (" + std::to_string(topology.gpu_numa_nodes.size()) +
                    " found): NUMA binding needs one GPU per local rank");
  const int node = topology.gpu_numa_nodes[static_cast<std::size_t>(gpu)];
  std::set<int> result;
  std::vector<int> node_gpus;  // the node's GPUs, ascending
  for (std::size_t i = 0; i < topology.gpu_numa_nodes.size(); ++i)
    if (topology.gpu_numa_nodes[i] == node) node_gpus.push_back(static_cast<int>(i));
  const auto position =
      static_cast<std::size_t>(std::find(node_gpus.begin(), node_gpus.end(), gpu) - node_gpus.begin());
  switch (mode) {
    case Mode::node: result = topology.allowed_cpus_of_node(node); break;
    case Mode::socket: {
      const int socket = topology.socket_of_node(node);
      for (int other : topology.nodes())
        if (topology.socket_of_node(other) == socket) {
          auto cpus = topology.allowed_cpus_of_node(other);
          result.insert(cpus.begin(), cpus.end());
        }
      break;
    }
    case Mode::exclusive: {
      std::map<int, std::set<int>> cores;  // lowest sibling -> allowed CPUs of that core
      for (int cpu : topology.allowed_cpus_of_node(node)) cores[*topology.core_siblings(cpu).begin()].insert(cpu);
      const std::size_t per_gpu = cores.size() / node_gpus.size();
      const std::size_t extra = cores.size() % node_gpus.size();
      if (per_gpu < 1)
        throw NumaError("NUMA node " + std::to_string(node) + " has " + std::to_string(cores.size()) +
                        " physical cores for " + std::to_string(node_gpus.size()) + " GPUs");
      const std::size_t start = position * per_gpu + std::min(position, extra);
      const std::size_t end = start + per_gpu + (position < extra ? 1 : 0);
      std::size_t index = 0;
      for (const auto& [core, cpus] : cores) {
        if (index >= start && index < end) result.insert(cpus.begin(), cpus.end());
        ++index;
      }
      break;
    }
    case Mode::core_complex: {
      std::map<int, std::set<int>> caches;  // lowest sharer -> allowed CPUs under that cache
      for (int cpu : topology.allowed_cpus_of_node(node))
        caches[*topology.last_level_cache_sharers(cpu).begin()].insert(cpu);
      std::vector<std::pair<int, std::set<int>>> ordered(caches.begin(), caches.end());
      // Caches with more CPUs first, then lower CPU numbers.
      std::stable_sort(ordered.begin(), ordered.end(),
                       [](const auto& a, const auto& b) { return a.second.size() > b.second.size(); });
      if (!ordered.empty()) result = ordered[position % ordered.size()].second;
      break;
    }
  }
  if (result.empty()) throw NumaError("no CPU this process may use is near GPU " + std::to_string(gpu));
  return result;
}

// The topology of this machine, with the NUMA node of each GPU from its PCI address.
inline Topology this_machine(const GpuInventory& gpus) {
  Topology topology;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof(set), &set) == 0)
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
      if (CPU_ISSET(cpu, &set)) topology.allowed_cpus.insert(cpu);
  for (const auto& bus_id : gpus.pci_bus_ids) {
    // NVML's "00000000:3B:00.0" is sysfs's "0000:3b:00.0".
    unsigned domain = 0, bus = 0, device = 0;
    if (std::sscanf(bus_id.c_str(), "%x:%x:%x", &domain, &bus, &device) != 3)
      throw NumaError("unreadable PCI address of a GPU: " + bus_id);
    char address[32];
    std::snprintf(address, sizeof(address), "%04x:%02x:%02x.0", domain, bus, device);
    // One NUMA node machines often say -1: that is node 0.
    topology.gpu_numa_nodes.push_back(
        std::max(0, topology.read_int(std::string("/bus/pci/devices/") + address + "/numa_node")));
  }
  return topology;
}

// Binds every thread of process `pid` to `cpus`.
inline void bind_process(pid_t pid, const std::set<int>& cpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int cpu : cpus)
    if (cpu >= 0 && cpu < CPU_SETSIZE) CPU_SET(cpu, &set);
  std::vector<pid_t> threads = {pid};
  if (DIR* tasks = ::opendir(("/proc/" + std::to_string(pid) + "/task").c_str())) {
    while (dirent* entry = ::readdir(tasks))
      if (entry->d_name[0] != '.') threads.push_back(static_cast<pid_t>(std::atoi(entry->d_name)));
    ::closedir(tasks);
  }
  for (pid_t tid : threads) ::sched_setaffinity(tid, sizeof(set), &set);
}

}  // namespace elastic::multiprocessing::numa
