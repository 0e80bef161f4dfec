// modelgated's heap in transparent huge pages: which mappings are malloc's
// heaps (and which are not: thread stacks, files), and a real pass over this
// process turning a thread's arena into huge pages.
#include <catch2/catch.hpp>

#include <memory>
#include <thread>
#include <vector>

#include "tools/modelgated/heap_pages.hpp"

using namespace mg;

TEST_CASE("heap regions are the main heap and malloc's arena heaps, not stacks or files") {
  // Taken from a running modelgated, shortened.
  auto maps = parse_memory_maps(
    "55d0c0a00000-55d0c0a21000 r-xp 00000000 fe:01 393 /usr/bin/modelgated\n"
    "55d0c1e4e000-55d0c2a6f000 rw-p 00000000 00:00 0                          [heap]\n"
    // an arena heap in use up to 0x7f2580c4d000, reserved to the 64 MiB boundary
    "7f257c000000-7f257ec4d000 rw-p 00000000 00:00 0 \n"
    "7f257ec4d000-7f2580000000 ---p 00000000 00:00 0 \n"
    // two whole heaps in use, merged
    "7f2584000000-7f258c000000 rw-p 00000000 00:00 0 \n"
    // a thread stack: its guard page, then the stack, which here happens to
    // start on a 64 MiB boundary, followed by the next stack's guard
    "7f258ffff000-7f2590000000 ---p 00000000 00:00 0 \n"
    "7f2590000000-7f2590800000 rw-p 00000000 00:00 0 \n"
    "7f2590800000-7f2590801000 ---p 00000000 00:00 0 \n"
    // a file mapping on a boundary
    "7f25a0000000-7f25a0100000 rw-p 00000000 fe:01 77 /var/lib/modelgate/db-shm\n"
    "not a line\n");
  REQUIRE(maps.size() == 9);
  CHECK(maps[1].name == "[heap]");
  CHECK(maps[1].anonymous);
  CHECK_FALSE(maps[8].anonymous);

  auto regions = heap_regions(maps);
  REQUIRE(regions.size() == 3);
  CHECK(regions[0].start == 0x55d0c1e4e000);
  CHECK(regions[0].end == 0x55d0c2a6f000);
  CHECK(regions[1].start == 0x7f257c000000);
  CHECK(regions[1].end == 0x7f2580000000); // with the reserved rest, where it grows
  CHECK(regions[2].start == 0x7f2584000000);
  CHECK(regions[2].end == 0x7f258c000000);
}

TEST_CASE("a pass turns a thread's arena into huge pages where the system allows them") {
  auto mode = transparent_huge_page_mode();
  INFO("THP mode: " << mode);
  // A thread allocates 24 MiB in small pieces, as probers and their
  // messages do, in an arena of its own.
  std::vector<std::unique_ptr<char[]>> pieces;
  std::thread([&pieces] {
    for (int i = 0; i < 24 * 1024; ++i) {
      pieces.emplace_back(new char[1000]);
      pieces.back()[0] = 1;
      pieces.back()[999] = 1;
    }
  }).join();
  auto before = anon_huge_page_kib();
  auto pass = advise_heap_huge_pages();
  auto after = anon_huge_page_kib();
  CHECK(pass.regions >= 2); // the main heap and the thread's arena
  if (mode == "never") {
    CHECK(after == before);
  } else {
    // At least 16 of the 24 MiB: the arena's first and last huge pages may
    // be partial.
    CHECK(after - before >= 16 * 1024);
  }
}
