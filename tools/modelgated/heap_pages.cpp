#include "tools/modelgated/heap_pages.hpp"

#include <fcntl.h>
#include <malloc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "protocol/log.hpp"

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25 // Linux 6.1; older headers lack it, older kernels say EINVAL
#endif

namespace mg {

namespace {

constexpr uintptr_t arena_heap_size = uintptr_t{64} << 20; // glibc's HEAP_MAX_SIZE on 64-bit
constexpr uintptr_t huge_page_size = uintptr_t{2} << 20;

std::string read_file(const char* path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

uintptr_t round_up(uintptr_t x, uintptr_t to) {
  return (x + to - 1) / to * to;
}

// `statm` is /proc/self/statm, kept open: a plain pread, not a stream or a
// path lookup, since this runs on every check.
int64_t resident_bytes(int statm) {
  char text[128];
  auto n = ::pread(statm, text, sizeof text - 1, 0);
  if (n <= 0)
    return 0;
  text[n] = '\0';
  char* rest = nullptr;
  std::strtoll(text, &rest, 10);                  // size
  auto resident = std::strtoll(rest, nullptr, 10); // resident pages
  return resident * static_cast<int64_t>(sysconf(_SC_PAGESIZE));
}

} // namespace

int64_t anon_huge_page_kib() {
  std::ifstream rollup("/proc/self/smaps_rollup");
  std::string line;
  constexpr std::string_view key = "AnonHugePages:";
  while (std::getline(rollup, line))
    if (line.compare(0, key.size(), key) == 0)
      return std::strtoll(line.c_str() + key.size(), nullptr, 10);
  return 0;
}

std::vector<memory_mapping> parse_memory_maps(const std::string& maps_text) {
  std::vector<memory_mapping> out;
  std::istringstream lines(maps_text);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    std::string range, offset, device;
    uint64_t inode = 0;
    memory_mapping m;
    if (!(fields >> range >> m.perms >> offset >> device >> inode))
      continue;
    auto dash = range.find('-');
    if (dash == std::string::npos)
      continue;
    try {
      m.start = std::stoull(range.substr(0, dash), nullptr, 16);
      m.end = std::stoull(range.substr(dash + 1), nullptr, 16);
    } catch (const std::exception&) {
      continue;
    }
    std::getline(fields >> std::ws, m.name);
    m.anonymous = inode == 0 && (m.name.empty() || m.name == "[heap]");
    out.push_back(std::move(m));
  }
  return out;
}

std::vector<memory_mapping> own_memory_maps() {
  return parse_memory_maps(read_file("/proc/self/maps"));
}

namespace {

std::optional<arena_heap_header> read_header(int mem, uintptr_t address) {
  arena_heap_header header;
  static_assert(sizeof(off_t) == 8, "user addresses as /proc/self/mem offsets");
  auto n = ::pread(mem, &header, sizeof header, static_cast<off_t>(address));
  if (n != static_cast<ssize_t>(sizeof header))
    return std::nullopt;
  return header;
}

} // namespace

std::optional<arena_heap_header> read_own_header(uintptr_t address) {
  // Through /proc/self/mem, which answers EIO where nothing is mapped: a
  // heap may be unmapped between reading the maps and here. Not
  // process_vm_readv, which the unit's @system-service filter lacks.
  int mem = ::open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
  if (mem < 0)
    return std::nullopt;
  auto header = read_header(mem, address);
  ::close(mem);
  return header;
}

std::vector<address_range> heap_regions(const std::vector<memory_mapping>& maps,
                                        const header_reader& read) {
  std::vector<address_range> out;
  auto page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  for (const auto& m : maps) {
    if (m.perms != "rw-p" || !m.anonymous)
      continue;
    if (m.name == "[heap]") {
      out.push_back({m.start, m.end});
      continue;
    }
    // Heaps in use next to each other may share one mapping.
    for (auto base = round_up(m.start, arena_heap_size); base < m.end; base += arena_heap_size) {
      auto h = read(base);
      if (!h || h->arena == 0 || h->pagesize != page || h->size == 0 ||
          h->size > h->mprotect_size || h->mprotect_size > arena_heap_size)
        continue;
      out.push_back({base, std::min<uintptr_t>(base + h->size, m.end)});
    }
  }
  return out;
}

std::string transparent_huge_page_mode() {
  // "always [madvise] never": the mode in use is the bracketed one.
  auto text = read_file("/sys/kernel/mm/transparent_hugepage/enabled");
  auto open = text.find('[');
  auto close = text.find(']', open);
  if (open == std::string::npos || close == std::string::npos)
    return "never";
  return text.substr(open + 1, close - open - 1);
}

bool kernel_collapses_huge_pages() {
  auto size = 2 * huge_page_size;
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    return false;
  auto* block = reinterpret_cast<char*>(round_up(reinterpret_cast<uintptr_t>(p), huge_page_size));
  block[0] = 1;
  int rc = madvise(block, huge_page_size, MADV_COLLAPSE);
  int error = rc == 0 ? 0 : errno;
  munmap(p, size);
  // EINVAL: no MADV_COLLAPSE (before Linux 6.1) or no THP in the kernel;
  // EPERM: a seccomp filter. ENOMEM or EAGAIN (no huge page free just now,
  // a page busy) say it can, later.
  return error != EINVAL && error != EPERM;
}

int64_t anon_huge_page_kib_at(uintptr_t address) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  constexpr std::string_view key = "AnonHugePages:";
  bool inside = false;
  while (std::getline(smaps, line)) {
    auto dash = line.find('-');
    auto space = line.find(' ');
    if (dash != std::string::npos && space != std::string::npos && dash < space &&
        line.find(':') > space) { // a mapping's first line, not "Key: value"
      auto start = std::strtoull(line.c_str(), nullptr, 16);
      auto end = std::strtoull(line.c_str() + dash + 1, nullptr, 16);
      inside = start <= address && address < end;
    } else if (inside && line.compare(0, key.size(), key) == 0) {
      return std::strtoll(line.c_str() + key.size(), nullptr, 10);
    }
  }
  return 0;
}

huge_page_pass collapse_heap_huge_pages() {
  huge_page_pass pass;
  if (transparent_huge_page_mode() == "never")
    return pass; // MADV_COLLAPSE would not ask; the administrator has
  int mem = ::open("/proc/self/mem", O_RDONLY | O_CLOEXEC); // one for the pass
  auto regions = heap_regions(own_memory_maps(),
                              [mem](uintptr_t at) -> std::optional<arena_heap_header> {
                                return mem < 0 ? std::nullopt : read_header(mem, at);
                              });
  if (mem >= 0)
    ::close(mem);
  for (const auto& region : regions) {
    // Whole huge pages only: a partial one at either end cannot collapse.
    auto first = round_up(region.start, huge_page_size);
    auto last = region.end / huge_page_size * huge_page_size;
    if (last <= first)
      continue;
    ++pass.regions;
    // Errors are per pass, not fatal: EAGAIN (a page busy), ENOMEM (no
    // huge page free), EINVAL (a block with nothing in it yet). The next
    // pass tries again.
    if (madvise(reinterpret_cast<void*>(first), last - first, MADV_COLLAPSE) == 0)
      ++pass.collapsed;
  }
  return pass;
}

heap_huge_pages::heap_huge_pages() {
  auto mode = transparent_huge_page_mode();
  if (mode == "never") {
    log(log_level::info, "heap stays in 4 KiB pages: transparent huge pages are off",
        {{"thp_mode", mode}});
    return;
  }
  if (!kernel_collapses_huge_pages()) {
    log(log_level::info, "heap stays in 4 KiB pages: the kernel cannot collapse memory "
                         "into huge pages (MADV_COLLAPSE, Linux 6.1)",
        {{"thp_mode", mode}});
    return;
  }
  // Heaps that grow in steps of at least one huge page: each thread's
  // arena starts 4 MiB large, so that even a small daemon's heaps (1,000
  // servers: about 7 MiB in several arenas) hold whole huge pages. Setting
  // it also keeps malloc's mmap threshold at 128 KiB instead of letting it
  // rise: blocks that large are rare here (a listing of all servers).
  mallopt(M_TOP_PAD, 4 << 20);
  try {
    thread_ = std::thread([this] {
      try {
        run();
      } catch (const std::exception& e) { // memory for a pass, most likely
        log(log_level::warning, "heap huge pages stopped", {{"error", e.what()}});
      }
    });
  } catch (const std::exception& e) {
    log(log_level::warning, "heap huge pages not started", {{"error", e.what()}});
  }
}

heap_huge_pages::~heap_huge_pages() {
  {
    std::lock_guard<std::mutex> guard(mx_);
    stop_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable())
    thread_.join();
}

void heap_huge_pages::nudge() {
  // A load first: a burst of registrations then reads a shared line
  // instead of all writing it.
  if (!backed_off_.load(std::memory_order_relaxed) ||
      !backed_off_.exchange(false, std::memory_order_relaxed))
    return; // checking every second already, or nudged since it backed off
  {
    std::lock_guard<std::mutex> guard(mx_);
    nudged_ = true;
  }
  cv_.notify_one();
}

void heap_huge_pages::run() {
  pthread_setname_np(pthread_self(), "mg.hugepages");
  int statm = ::open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  int64_t passed_at = -1; // resident bytes after the last pass
  auto period = std::chrono::seconds(1);
  std::unique_lock<std::mutex> lock(mx_);
  while (!stop_) {
    auto resident = resident_bytes(statm);
    if (resident < passed_at)
      passed_at = resident; // memory given back: growth counts from here
    if (passed_at < 0 || resident >= passed_at + static_cast<int64_t>(huge_page_size)) {
      lock.unlock();
      auto pass = collapse_heap_huge_pages();
      passed_at = resident_bytes(statm);
      if (log_enabled(log_level::debug)) // smaps_rollup walks every page table
        log(log_level::debug, "heap collapsed into huge pages",
            {{"regions", pass.regions},
             {"collapsed", pass.collapsed},
             {"resident_kib", passed_at >> 10},
             {"huge_kib", anon_huge_page_kib()}});
      lock.lock();
      period = std::chrono::seconds(1);
    } else {
      // A wake-up of an idle thread is not free (a few milliseconds of CPU
      // each on this machine): less often while nothing grows.
      period = std::min(period * 2, std::chrono::seconds(16));
    }
    if (statm < 0)
      break; // no way to see growth: the first pass is the only one
    backed_off_.store(period > std::chrono::seconds(1), std::memory_order_relaxed);
    cv_.wait_for(lock, period, [this] { return stop_ || nudged_; });
    if (nudged_) {
      nudged_ = false;
      period = std::chrono::seconds(1);
      cv_.wait_for(lock, period, [this] { return stop_; }); // let the growth happen
    }
  }
  if (statm >= 0)
    ::close(statm);
}

} // namespace mg
