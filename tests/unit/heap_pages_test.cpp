// modelgated's heap in transparent huge pages: which mappings are malloc's
// heaps (and which are not: thread stacks, files), and a real pass over this
// process turning a thread's arena into huge pages.
#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <memory>
#include <unistd.h>
#include <thread>
#include <vector>

#include "tools/modelgated/heap_pages.hpp"

using namespace mg;

TEST_CASE("heap regions are the main heap and malloc's arena heaps, not stacks or files") {
  auto maps = parse_memory_maps(
    "55d0c0a00000-55d0c0a21000 r-xp 00000000 fe:01 393 /usr/bin/modelgated\n"
    "55d0c1e4e000-55d0c2a6f000 rw-p 00000000 00:00 0                          [heap]\n"
    // an arena heap in use up to 0x7f257ec4d000, reserved to the 64 MiB boundary
    "7f257c000000-7f257ec4d000 rw-p 00000000 00:00 0 \n"
    "7f257ec4d000-7f2580000000 ---p 00000000 00:00 0 \n"
    // two whole heaps next to each other, one mapping
    "7f2584000000-7f258c000000 rw-p 00000000 00:00 0 \n"
    // a thread stack: its guard page, then the stack, which here happens to
    // start on a 64 MiB boundary
    "7f258ffff000-7f2590000000 ---p 00000000 00:00 0 \n"
    "7f2590000000-7f2590800000 rw-p 00000000 00:00 0 \n"
    // a heap whose mapping starts below its boundary (a large chunk mmapped
    // just under it merged with it) and ends before the header's size
    "7f2593000000-7f2596000000 rw-p 00000000 00:00 0 \n"
    // two boundaries whose bytes are no plausible header
    "7f2598000000-7f2599000000 rw-p 00000000 00:00 0 \n"
    "7f259c000000-7f259d000000 rw-p 00000000 00:00 0 \n"
    // a file mapping on a boundary
    "7f25a0000000-7f25a0100000 rw-p 00000000 fe:01 77 /var/lib/modelgate/db-shm\n"
    "not a line\n");
  REQUIRE(maps.size() == 11);
  CHECK(maps[1].name == "[heap]");
  CHECK(maps[1].anonymous);
  CHECK(maps[3].perms == "---p");
  CHECK_FALSE(maps[10].anonymous);

  // glibc's headers where the heaps start; the stack's first bytes are not
  // one (no arena), and nobody reads the file.
  auto page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  std::map<uintptr_t, arena_heap_header> memory{
    {0x7f257c000000, {0x7f257c000020, 0, 0x2c4d000, 0x2c4d000, page}},
    {0x7f2584000000, {0x7f2584000020, 0, 0x4000000, 0x4000000, page}},
    {0x7f2588000000, {0x7f2584000020, 0x7f2584000000, 0x1000000, 0x4000000, page}},
    {0x7f2590000000, {0, 0x7f2590001000, 0, 0, 0}},
    {0x7f2594000000, {0x7f2594000020, 0, 0x3000000, 0x3000000, page}},
    {0x7f2598000000, {0x7f2598000020, 0, 0x2000000, 0x1000000, page}}, // size > mprotect_size
    {0x7f259c000000, {0x7f259c000020, 0, 0x1000000, 0x1000000, page * 16}}, // another page size
  };
  std::vector<uintptr_t> read;
  auto regions = heap_regions(maps, [&](uintptr_t at) -> std::optional<arena_heap_header> {
    read.push_back(at);
    auto it = memory.find(at);
    if (it == memory.end())
      return std::nullopt;
    return it->second;
  });
  CHECK(read == std::vector<uintptr_t>{0x7f257c000000, 0x7f2584000000, 0x7f2588000000,
                                       0x7f2590000000, 0x7f2594000000, 0x7f2598000000,
                                       0x7f259c000000});
  REQUIRE(regions.size() == 5);
  CHECK(regions[0].start == 0x55d0c1e4e000);
  CHECK(regions[0].end == 0x55d0c2a6f000);
  CHECK(regions[1].start == 0x7f257c000000);
  CHECK(regions[1].end == 0x7f257ec4d000);
  CHECK(regions[2].start == 0x7f2584000000);
  CHECK(regions[2].end == 0x7f2588000000);
  CHECK(regions[3].start == 0x7f2588000000);
  CHECK(regions[3].end == 0x7f2589000000); // the header's size, not the mapping's end
  CHECK(regions[4].start == 0x7f2594000000);
  CHECK(regions[4].end == 0x7f2596000000); // the mapping's end, not the header's size
}

TEST_CASE("a pass turns a thread's arena into huge pages where the system allows them") {
  auto mode = transparent_huge_page_mode();
  bool collapses = kernel_collapses_huge_pages();
  INFO("THP mode: " << mode << ", MADV_COLLAPSE works: " << collapses);
  // A thread allocates 24 MiB in small pieces, as probers and their
  // messages do, in an arena of its own.
  std::vector<std::unique_ptr<char[]>> pieces;
  pieces.reserve(24 * 1024);
  std::thread([&pieces] {
    for (int i = 0; i < 24 * 1024; ++i) {
      pieces.emplace_back(new char[1000]);
      pieces.back()[0] = 1;
      pieces.back()[999] = 1;
    }
  }).join();
  auto middle = reinterpret_cast<uintptr_t>(pieces[pieces.size() / 2].get());

  // The real glibc's layout: the piece lies in a heap heap_regions finds.
  auto regions = heap_regions(own_memory_maps(), read_own_header);
  CHECK(std::any_of(regions.begin(), regions.end(),
                    [&](const address_range& r) { return r.start <= middle && middle < r.end; }));

  auto before = anon_huge_page_kib_at(middle);
  auto pass = collapse_heap_huge_pages();
  auto after = anon_huge_page_kib_at(middle);
  if (mode == "never") {
    CHECK(pass.regions == 0);
    CHECK(after == before);
  } else if (collapses) {
    CHECK(pass.regions >= 1); // the thread's arena at least
    CHECK(after >= 8 * 1024); // of the 24 MiB, some in this mapping
  } else {
    CHECK(after == before);
  }
}
