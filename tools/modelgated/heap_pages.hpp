// Transparent huge pages for modelgated's heap.
//
// At 10,000 servers every tick of every prober touches a few cache lines in
// each of its objects (the CAF actor, its mailbox element, its behaviour,
// the probe client, the registry's record), scattered over tens of
// megabytes of 4 KiB pages that go cold between one tick and the next. With
// malloc's heaps in 2 MiB pages instead, the CPU per probe fell by about a
// sixth at 10,000 servers (18.3 to 15.3 µs; docs/benchmarks.md, session
// 9). We take the reason to be fewer TLB misses, each dearer in a virtual
// machine, and, on the development machine, no stalls from below the guest
// on memory idle for a second (build/bin/cold_touch ... huge: 0.1 % of
// touches against 2-10 %); the A/B measured the effect, not the mechanism.
//
// glibc's malloc does not ask for huge pages by itself (its
// glibc.malloc.hugetlb tunable must be in the environment before the
// program starts, and even then skips the small steps arenas grow by), so
// modelgated asks the kernel: madvise(MADV_COLLAPSE) (Linux 6.1 and later)
// over the part of each heap that malloc uses, at start and after the
// process's memory has grown; and malloc's heaps grow in steps of 4 MiB
// (M_TOP_PAD), so that a small daemon's arenas hold whole huge pages too
// (at 1,000 servers, resident memory 16 -> 30 MiB, CPU per probe a fifth
// less). Nothing else is asked: no MADV_HUGEPAGE, so no
// page fault waits on compaction, and no khugepaged filling. Not when the
// system's THP mode is "never" (MADV_COLLAPSE itself would ignore it), and
// not on a kernel that cannot collapse. Thread stacks, files and other
// mappings are left alone. A collapse makes each 2 MiB block of a heap
// that malloc uses wholly resident, pages it has not touched too (resident
// memory at 10,000 servers 65 -> 73 MiB with the 4 MiB steps), and copies
// the block while the kernel holds the process's memory map, so a page
// fault or mmap of another thread waits for it: only after growth, a block
// at a time.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
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

/// This process's mappings (/proc/self/maps).
std::vector<memory_mapping> own_memory_maps();

/// The header glibc (2.35 and later) puts at the start of each arena heap,
/// an aligned 64 MiB reservation (HEAP_MAX_SIZE): malloc_state* ar_ptr,
/// heap_info* prev, size_t size, mprotect_size, pagesize.
struct arena_heap_header {
  uintptr_t arena = 0;
  uintptr_t prev = 0;
  uint64_t size = 0;          // in use by malloc, from the heap's start
  uint64_t mprotect_size = 0; // made readable and writable
  uint64_t pagesize = 0;
};

/// Reads the header at an address; nullopt if it is not readable.
using header_reader = std::function<std::optional<arena_heap_header>(uintptr_t)>;

/// Reads this process's memory without faulting (/proc/self/mem).
std::optional<arena_heap_header> read_own_header(uintptr_t address);

struct address_range {
  uintptr_t start = 0;
  uintptr_t end = 0;
};

/// The parts of malloc's heaps in use, among `maps`: the main heap
/// ("[heap]"), and every arena heap, found at a 64 MiB boundary inside an
/// anonymous read-write mapping where a plausible header lies (arena set,
/// this page size, size <= mprotect_size <= 64 MiB); a stack or another
/// mapping that happens to start on a boundary has none. The range ends at
/// the header's size, within the mapping.
std::vector<address_range> heap_regions(const std::vector<memory_mapping>& maps,
                                        const header_reader& read);

/// The system's THP mode: "always", "madvise" or "never" (also when the
/// kernel has no THP).
std::string transparent_huge_page_mode();

/// Whether this kernel can collapse anonymous memory into a huge page
/// (MADV_COLLAPSE, Linux 6.1): tried once on a scratch mapping.
bool kernel_collapses_huge_pages();

/// This process's anonymous memory in huge pages: all of it
/// (/proc/self/smaps_rollup), or that of the mapping holding `address`
/// (/proc/self/smaps).
int64_t anon_huge_page_kib();
int64_t anon_huge_page_kib_at(uintptr_t address);

struct huge_page_pass {
  size_t regions = 0;   // heap ranges asked to collapse
  size_t collapsed = 0; // of those, collapsed whole (or already huge)
};

/// Collapses the heap ranges of this process into huge pages; nothing when
/// the THP mode is "never".
huge_page_pass collapse_heap_huge_pages();

/// A thread that runs collapse_heap_huge_pages at start and then whenever
/// the process's resident memory has grown by a huge page or more since the
/// last pass: checked every second after a pass or a nudge, backing off to
/// every 16 s while nothing grows. Not started when the THP mode is "never"
/// or the kernel cannot collapse; logs why at INFO.
class heap_huge_pages {
public:
  heap_huge_pages();
  ~heap_huge_pages();
  heap_huge_pages(const heap_huge_pages&) = delete;
  heap_huge_pages& operator=(const heap_huge_pages&) = delete;

  /// Memory may be about to grow (servers registered, probing started):
  /// back to checking every second. Cheap from any thread; wakes the
  /// thread at most once per backing off.
  void nudge();

private:
  void run();

  std::mutex mx_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool nudged_ = false;
  std::atomic<bool> backed_off_{false}; // checking less often than every second
  std::thread thread_;
};

} // namespace mg
