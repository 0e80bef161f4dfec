// What the first touch of memory left alone for a while costs on this
// machine: N pages of unique content, one byte of each read (or written)
// every `gap`, for a number of seconds. Prints the mean cost of a touch, and
// how many touches stalled for more than 20 µs, with their share of the CPU.
//
// A prober touches its server's memory once an interval, so a probe's cost
// includes this. On the virtual machines here a page idle for a second
// stalls its first touch for 100-350 µs in a few percent of touches, a page
// touched every 10 ms almost never; the guest sees no page fault (its
// minflt stays put), so it is the host's doing, and how often varies hour to
// hour. That is what makes modelgated's CPU per probe at 1,000 servers
// bimodal (docs/benchmarks.md).
//
// Built with the tests (build/bin/cold_touch); run by hand:
//     build/bin/cold_touch [pages (1000)] [gap-ms (1000)] [seconds (6)] [read|write] [small|huge]
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>

#include <sys/mman.h>

int main(int argc, char** argv) {
  using clock = std::chrono::steady_clock;
  long pages = argc > 1 ? std::atol(argv[1]) : 1000;
  long gap_ms = argc > 2 ? std::atol(argv[2]) : 1000;
  long seconds = argc > 3 ? std::atol(argv[3]) : 6;
  bool write = argc > 4 && std::strcmp(argv[4], "write") == 0;
  bool huge = argc > 5 && std::strcmp(argv[5], "huge") == 0;
  if (pages < 1 || gap_ms < 0 || seconds < 1) {
    std::fprintf(stderr, "usage: cold_touch [pages >= 1] [gap-ms >= 0] [seconds >= 1] [read|write] [small|huge]\n");
    return 2;
  }
  constexpr size_t page = 4096;
  constexpr size_t huge_page = size_t{2} << 20;
  // In whole huge pages, so that every page touched is in one.
  size_t length = (pages * page + huge_page - 1) / huge_page * huge_page;
  auto* area = static_cast<char*>(mmap(nullptr, length + huge_page, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (area == MAP_FAILED) {
    std::perror("mmap");
    return 1;
  }
  // 4 KiB pages, as malloc's by default; or, with `huge`, 2 MiB pages, as
  // modelgated's heap since session 9.
  auto* aligned = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(area) + huge_page - 1) /
                                          huge_page * huge_page);
  auto* mem = reinterpret_cast<volatile uint64_t*>(aligned);
  madvise(aligned, length, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE); // `huge` needs THP madvise/always
  std::mt19937_64 rng(42); // unique content: no page can be merged with another
  for (size_t i = 0; i < pages * page / sizeof(uint64_t); ++i)
    mem[i] = rng();
  constexpr auto stall = std::chrono::microseconds(20);
  uint64_t touches = 0, stalls = 0, sink = 0;
  clock::duration total{}, stalled{};
  auto end = clock::now() + std::chrono::seconds(seconds);
  while (clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(gap_ms));
    for (long p = 0; p < pages; ++p) {
      auto* word = mem + p * page / sizeof(uint64_t) + 8; // one line in, as an object's field
      auto t = clock::now();
      if (write)
        *word = *word + 1;
      else
        sink += *word;
      auto d = clock::now() - t;
      total += d;
      ++touches;
      if (d > stall) {
        ++stalls;
        stalled += d;
      }
    }
  }
  auto us = [](clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); };
  std::printf("%ld pages, %s one line of each every %ld ms for %ld s: %.2f us per touch; "
              "%.1f stalls over 20 us a second (%.2f %% of touches, %.1f ms of CPU a second)%s%s\n",
              pages, write ? "writing" : "reading", gap_ms, seconds, us(total) / touches,
              double(stalls) / seconds, 100.0 * stalls / touches, us(stalled) / 1000 / seconds,
              sink == 42 ? " " : "", huge ? " [2 MiB pages]" : "");
}
