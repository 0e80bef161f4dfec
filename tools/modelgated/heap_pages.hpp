// Transparent huge pages for modelgated's heap.
//
// At 10,000 servers every tick of every prober touches a few cache lines in
// each of its objects (the CAF actor, its mailbox element, its behaviour,
// the probe client, the registry's record), and those objects lie scattered
// over tens of megabytes of 4 KiB pages that go cold between one tick and
// the next. Each first touch is then a TLB miss, and in a virtual machine a
// TLB miss walks two sets of page tables. With the heap in 2 MiB pages the
// same memory is a few dozen TLB entries: at 10,000 servers that cut the
// CPU per probe by about a quarter (docs/benchmarks.md, session 9).
//
// glibc's malloc does not ask for huge pages by itself (its
// glibc.malloc.hugetlb tunable must be set in the environment before the
// program starts, and even then skips the small steps arenas grow by), so
// modelgated asks the kernel for them: madvise(MADV_HUGEPAGE) on malloc's
// heaps, so that khugepaged and new faults use huge pages, and
// madvise(MADV_COLLAPSE) (Linux 6.1 and later) to turn what is already
// there into huge pages at once. Only where the system's THP mode is
// "madvise" or "always": with "never" nothing is asked. Thread stacks and
// other mappings are left alone.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace mg {

/// One mapping of /proc/self/maps, as far as heap_regions needs it.
struct memory_mapping {
  uintptr_t start = 0;
  uintptr_t end = 0;
  std::string perms; // "rw-p", "---p", ...
  bool anonymous = false;
  std::string name;  // "[heap]", a path, or empty
};

std::vector<memory_mapping> parse_memory_maps(const std::string& maps_text);

/// The address ranges of malloc's heaps among `maps`: the main heap
/// ("[heap]") and every arena heap (an anonymous mapping that starts on a
/// 64 MiB boundary, glibc's HEAP_MAX_SIZE, with its reserved PROT_NONE
/// rest up to the next boundary, so the flag follows the heap as it grows).
/// Thread stacks never start on such a boundary: their guard page comes
/// first.
struct address_range {
  uintptr_t start = 0;
  uintptr_t end = 0;
};
std::vector<address_range> heap_regions(const std::vector<memory_mapping>& maps);

/// The system's THP mode: "always", "madvise" or "never" (also when the
/// kernel has no THP).
std::string transparent_huge_page_mode();

/// This process's anonymous memory in huge pages (/proc/self/smaps_rollup).
int64_t anon_huge_page_kib();

struct huge_page_pass {
  size_t regions = 0;         // heap regions advised
  size_t bytes_collapsed = 0; // turned into huge pages by this pass (counted
                              // only when DEBUG lines are logged)
};

/// Advises every heap region of this process and collapses what is there.
huge_page_pass advise_heap_huge_pages();

/// A thread that runs advise_heap_huge_pages at start and then whenever the
/// process's resident memory has grown by a huge page or more since the last
/// pass (checked every second after a pass, backing off to every 16 s while
/// nothing grows). Does nothing when the THP mode is "never".
class heap_huge_pages {
public:
  heap_huge_pages();
  ~heap_huge_pages();
  heap_huge_pages(const heap_huge_pages&) = delete;
  heap_huge_pages& operator=(const heap_huge_pages&) = delete;

private:
  void run();

  std::mutex mx_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

} // namespace mg
