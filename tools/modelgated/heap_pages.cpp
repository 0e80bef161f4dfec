#include "tools/modelgated/heap_pages.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

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
// path lookup, since this runs on every check, and on this kind of machine
// each page of code or data first touched after seconds of idleness can
// cost a stall of 100 µs or more.
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
      return std::stoll(line.substr(key.size()));
  return 0;
}

std::vector<memory_mapping> parse_memory_maps(const std::string& maps_text) {
  std::vector<memory_mapping> out;
  std::istringstream lines(maps_text);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    std::string range, offset, device, name;
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

std::vector<address_range> heap_regions(const std::vector<memory_mapping>& maps) {
  std::vector<address_range> out;
  for (size_t i = 0; i < maps.size(); ++i) {
    const auto& m = maps[i];
    if (m.perms != "rw-p" || !m.anonymous)
      continue;
    if (m.name == "[heap]") {
      out.push_back({m.start, m.end});
      continue;
    }
    if (m.start % arena_heap_size != 0)
      continue;
    // An arena heap: its usable part, then (unless it is all in use) the
    // PROT_NONE rest of its 64 MiB. Several heaps in use may have merged.
    auto reserved_end = round_up(m.end, arena_heap_size);
    if (m.end == reserved_end) {
      out.push_back({m.start, m.end});
      continue;
    }
    if (i + 1 < maps.size()) {
      const auto& rest = maps[i + 1];
      if (rest.perms == "---p" && rest.anonymous && rest.start == m.end && rest.end == reserved_end)
        out.push_back({m.start, reserved_end});
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

huge_page_pass advise_heap_huge_pages() {
  huge_page_pass pass;
  auto maps = parse_memory_maps(read_file("/proc/self/maps"));
  // smaps_rollup walks every page table of the process: only for the log.
  bool counting = log_enabled(log_level::debug);
  auto before = counting ? anon_huge_page_kib() : 0;
  for (const auto& region : heap_regions(maps)) {
    auto* start = reinterpret_cast<void*>(region.start);
    if (madvise(start, region.end - region.start, MADV_HUGEPAGE) != 0)
      continue;
    ++pass.regions;
    // Only the part in use, in whole huge pages: the PROT_NONE rest has no
    // pages, and a partial huge page at the end cannot be collapsed.
    uintptr_t used_end = region.end;
    for (const auto& m : maps)
      if (m.start == region.start)
        used_end = m.end;
    auto first = round_up(region.start, huge_page_size);
    auto last = used_end / huge_page_size * huge_page_size;
    if (last > first)
      (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_COLLAPSE);
  }
  auto after = counting ? anon_huge_page_kib() : 0;
  if (after > before)
    pass.bytes_collapsed = static_cast<size_t>(after - before) << 10;
  return pass;
}

heap_huge_pages::heap_huge_pages() {
  auto mode = transparent_huge_page_mode();
  if (mode == "never") {
    log(log_level::info, "heap stays in 4 KiB pages: transparent huge pages are off",
        {{"thp_mode", mode}});
    return;
  }
  thread_ = std::thread([this] { run(); });
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

void heap_huge_pages::run() {
  pthread_setname_np(pthread_self(), "mg.hugepages");
  int statm = ::open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  int64_t advised_at = -1; // resident bytes after the last pass
  // Checked every second while memory grows (a burst of registrations is in
  // huge pages about a second after its end), then less and less often, up
  // to every 16 s: a wake-up of an idle thread is not free.
  auto period = std::chrono::seconds(1);
  std::unique_lock<std::mutex> lock(mx_);
  while (!stop_) {
    auto resident = resident_bytes(statm);
    if (resident < advised_at)
      advised_at = resident; // memory given back: growth counts from here
    if (advised_at < 0 || resident >= advised_at + static_cast<int64_t>(huge_page_size)) {
      lock.unlock();
      auto pass = advise_heap_huge_pages();
      advised_at = resident_bytes(statm);
      if (log_enabled(log_level::debug))
        log(log_level::debug, "heap advised for huge pages",
          {{"regions", pass.regions},
           {"collapsed_kib", pass.bytes_collapsed >> 10},
           {"resident_kib", advised_at >> 10},
           {"huge_kib", anon_huge_page_kib()}});
      lock.lock();
      period = std::chrono::seconds(1);
    } else {
      period = std::min(period * 2, std::chrono::seconds(16));
    }
    cv_.wait_for(lock, period, [this] { return stop_; });
  }
  if (statm >= 0)
    ::close(statm);
}

} // namespace mg
