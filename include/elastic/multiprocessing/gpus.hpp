// The NVIDIA GPUs this process may use, counted as CUDA would count them: NVML (loaded with
// dlopen when the driver is installed, no build dependency) or else the /dev/nvidiaN device
// nodes, narrowed by CUDA_VISIBLE_DEVICES (indices, GPU-<uuid> and MIG-<uuid> entries).
#pragma once

#include <dirent.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

namespace elastic::multiprocessing {

// What is known of the machine's GPUs.
struct GpuInventory {
  int count = 0;
  std::vector<std::string> uuids;        // "GPU-..." by index, when NVML told; else empty
  std::vector<std::string> pci_bus_ids;  // "0000:3b:00.0" by index, when NVML told
};

namespace detail {

inline bool all_decimal(const std::string& text) {
  return !text.empty() && text.size() <= 9 && text.find_first_not_of("0123456789") == std::string::npos;
}

// NVIDIA device nodes /dev/nvidia0, /dev/nvidia1, ... (not nvidiactl, nvidia-uvm).
inline int nvidia_device_nodes(const std::string& dev_dir = "/dev") {
  int count = 0;
  if (DIR* dir = ::opendir(dev_dir.c_str())) {
    while (dirent* entry = ::readdir(dir)) {
      std::string name = entry->d_name;
      if (name.rfind("nvidia", 0) == 0 && all_decimal(name.substr(6))) ++count;
    }
    ::closedir(dir);
  }
  return count;
}

// The GPUs NVML reports, or nullopt when libnvidia-ml cannot be loaded or initialized.
inline std::optional<GpuInventory> nvml_inventory(const char* library = "libnvidia-ml.so.1") {
  void* nvml = ::dlopen(library, RTLD_NOW | RTLD_LOCAL);
  if (nvml == nullptr) return std::nullopt;
  // NVML's C API (nvml.h), declared here so that building needs no driver headers.
  using Init = int (*)();
  using GetCount = int (*)(unsigned*);
  using GetHandle = int (*)(unsigned, void**);
  using GetUuid = int (*)(void*, char*, unsigned);
  struct PciInfo {
    char bus_id_legacy[16];
    unsigned domain, bus, device, pci_device_id, pci_subsystem_id;
    char bus_id[32];
  };
  using GetPci = int (*)(void*, PciInfo*);
  using Shutdown = int (*)();
  auto init = reinterpret_cast<Init>(::dlsym(nvml, "nvmlInit_v2"));
  auto get_count = reinterpret_cast<GetCount>(::dlsym(nvml, "nvmlDeviceGetCount_v2"));
  auto get_handle = reinterpret_cast<GetHandle>(::dlsym(nvml, "nvmlDeviceGetHandleByIndex_v2"));
  auto get_uuid = reinterpret_cast<GetUuid>(::dlsym(nvml, "nvmlDeviceGetUUID"));
  auto get_pci = reinterpret_cast<GetPci>(::dlsym(nvml, "nvmlDeviceGetPciInfo_v3"));
  auto shutdown = reinterpret_cast<Shutdown>(::dlsym(nvml, "nvmlShutdown"));
  std::optional<GpuInventory> result;
  unsigned count = 0;
  if (init != nullptr && get_count != nullptr && shutdown != nullptr && init() == 0) {
    if (get_count(&count) == 0) {
      result.emplace();
      result->count = static_cast<int>(count);
      for (unsigned i = 0; i < count && get_handle != nullptr; ++i) {
        void* device = nullptr;
        if (get_handle(i, &device) != 0) break;
        char uuid[96] = {};
        if (get_uuid != nullptr && get_uuid(device, uuid, sizeof(uuid) - 1) == 0) result->uuids.emplace_back(uuid);
        PciInfo pci{};
        if (get_pci != nullptr && get_pci(device, &pci) == 0) result->pci_bus_ids.emplace_back(pci.bus_id);
      }
      if (result->uuids.size() != count) result->uuids.clear();
      if (result->pci_bus_ids.size() != count) result->pci_bus_ids.clear();
    }
    shutdown();
  }
  ::dlclose(nvml);
  return result;
}

}  // namespace detail

// The GPUs of this machine: NVML's answer, else the device nodes in `dev_dir`.
inline GpuInventory gpu_inventory(const std::string& dev_dir = "/dev") {
  if (auto nvml = detail::nvml_inventory()) return *nvml;
  GpuInventory fallback;
  fallback.count = detail::nvidia_device_nodes(dev_dir);
  return fallback;
}

// The indices (into `gpus`) of the devices CUDA_VISIBLE_DEVICES = `visible` lets a process use,
// in CUDA's order, read as newest PyTorch reads it: comma-separated entries of the first
// entry's kind (indices, GPU-... or MIG-...) up to the first invalid one or one of another
// kind. An index must be below the device count and is read as strtoul reads it ("1gpu" is
// 1); a GPU-<uuid> (or a unique prefix of one) is looked up when the UUIDs are known. MIG-...
// entries count one device each and get the index -1 (a MIG instance, not a whole GPU), as
// do GPU-... entries when the UUIDs are unknown. A device named twice empties the list
// (newest PyTorch counts no GPU then; torch 1.13 counted it once).
inline std::vector<int> visible_devices(const std::string& visible, const GpuInventory& gpus) {
  std::vector<int> result;
  std::vector<std::string> named;
  char kind = 0;  // of the first entry: 'i' index, 'G' GPU-..., 'M' MIG-...
  std::size_t start = 0;
  while (start < visible.size()) {
    std::size_t comma = visible.find(',', start);
    std::string item = visible.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    const std::string digits = item.substr(0, item.find_first_not_of("0123456789"));
    const char item_kind = !digits.empty()                                 ? 'i'
                           : item.rfind("GPU-", 0) == 0 && item.size() > 4 ? 'G'
                           : item.rfind("MIG-", 0) == 0 && item.size() > 4 ? 'M'
                                                                           : 0;
    if (item_kind == 0 || (kind != 0 && item_kind != kind)) break;
    kind = item_kind;
    int index = -1;
    if (kind == 'i') {
      if (!detail::all_decimal(digits) || std::stoi(digits) >= gpus.count) break;
      index = std::stoi(digits);
    } else if (kind == 'G' && !gpus.uuids.empty()) {
      int matches = 0;
      for (std::size_t i = 0; i < gpus.uuids.size(); ++i)
        if (gpus.uuids[i].rfind(item, 0) == 0) {
          index = static_cast<int>(i);
          ++matches;
        }
      if (matches != 1) break;  // unknown or ambiguous
    }
    const bool repeated = index >= 0 ? std::find(result.begin(), result.end(), index) != result.end()
                                     : std::find(named.begin(), named.end(), item) != named.end();
    if (repeated) return {};
    result.push_back(index);
    named.push_back(item);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return result;
}

// GPUs this process may use: the inventory narrowed by CUDA_VISIBLE_DEVICES when it is set.
inline int gpu_count(const GpuInventory& gpus, const char* cuda_visible_devices) {
  if (cuda_visible_devices == nullptr) return gpus.count;
  if (gpus.count == 0) return 0;
  const auto devices = visible_devices(cuda_visible_devices, gpus);
  const bool mig = std::any_of(devices.begin(), devices.end(), [&](int index) { return index < 0; }) &&
                   std::string(cuda_visible_devices).find("MIG-") != std::string::npos;
  // Whole GPUs cannot outnumber the machine's; MIG instances (several per GPU) can.
  return mig ? static_cast<int>(devices.size()) : std::min(static_cast<int>(devices.size()), gpus.count);
}

inline int gpu_count() { return gpu_count(gpu_inventory(), std::getenv("CUDA_VISIBLE_DEVICES")); }

}  // namespace elastic::multiprocessing
