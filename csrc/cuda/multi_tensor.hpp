// Multi-tensor apply's chunking and launch metadata, in plain C++: the host side (the launcher in
// pylr._cuda, and pylr._core's host tests) cuts every tensor of a step into fixed-size chunks and
// packs them into launches; the device side (and its host emulation) asks which tensor and which
// elements a block handles.
//
// A launch carries its metadata by value, as a kernel argument (as apex's and torch's
// multi_tensor_apply do): up to `Slots` tensor slots, each with its element count, the chunk of
// its tensor it starts at, and the first block of the launch that works on it (a prefix sum). A
// block finds its slot by binary search over those prefix sums, so the metadata is bounded by the
// slot count alone — not by the number of blocks: one launch covers a 256M-element tensor, and a
// launch holds hundreds of small ones. A new launch starts when the slots, the launch's table of
// param groups, or its block budget fill; a tensor that does not fit in what is left continues in
// the next launch from the chunk where it stopped.
//
// Not here: what a block does with its elements (step_kernels.hpp), and CUDA itself (no CUDA
// header is needed to compile this file).
#pragma once

#include <cstddef>
#include <cstdint>

#include "optim/math.hpp"  // PYLR_HD

namespace pylr {
namespace cuda {

// Elements per chunk (one block's work), threads per block, and elements per thread and
// iteration (vectorised loads: 16 bytes of float32, 8 of bfloat16 / float16).
constexpr std::int64_t kChunkElements = 1 << 16;
constexpr int kBlockThreads = 512;
constexpr int kILP = 4;
// A kernel argument's size limit (CUDA >= 12.1 on Volta and newer: 32764 bytes).
constexpr std::size_t kMaxLaunchBytes = 32764;
// The largest param-group table a launch may carry.
constexpr int kMaxLaunchGroups = 64;

// Which blocks of a launch handle which tensor slot: slot s owns the blocks
// [block_start[s], block_start[s + 1]), its block b handling chunk first_chunk[s] + b -
// block_start[s] of its tensor, whose element count is numel[s].
template <int Slots>
struct LaunchMap {
    std::int32_t n_slots;
    std::int64_t chunk;  // elements per chunk
    std::int32_t block_start[Slots + 1];
    std::int64_t first_chunk[Slots];
    std::int64_t numel[Slots];
};

// A block's work: its slot and its element range [begin, end) in that slot's tensor.
struct BlockSpan {
    std::int32_t slot;
    std::int64_t begin;
    std::int64_t end;
};

template <int Slots>
PYLR_HD std::int32_t launch_blocks(const LaunchMap<Slots>& map) {
    return map.block_start[map.n_slots];
}

template <int Slots>
PYLR_HD BlockSpan locate_block(const LaunchMap<Slots>& map, std::int32_t block) {
    // the last slot whose first block is at or before `block`
    std::int32_t lo = 0, hi = map.n_slots - 1;
    while (lo < hi) {
        const std::int32_t mid = (lo + hi + 1) / 2;
        if (map.block_start[mid] <= block) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    const std::int64_t chunk = map.first_chunk[lo] + (block - map.block_start[lo]);
    const std::int64_t begin = chunk * map.chunk;
    const std::int64_t end = begin + map.chunk < map.numel[lo] ? begin + map.chunk : map.numel[lo];
    return {lo, begin, end};
}

// What one launch may hold. Each is at most the launch struct's capacity; smaller values (host
// tests) make launches fill sooner.
struct PlanLimits {
    std::int32_t max_slots;
    std::int32_t max_groups;
    std::int32_t max_blocks;
    std::int64_t chunk;  // elements per chunk
};

// Cuts the rows a step updates into launches, in row order. `rows` answers count(), numel(r),
// group(r) and included(r) (the rows of one kernel variant); the sink receives, per launch,
// group(slot_of_group, group) for each param group as it enters the launch, slot(slot, row,
// group_slot, first_chunk, first_block) for each tensor slot, then launch(n_slots, n_groups,
// n_blocks). Rows with no elements get no slot. Allocates nothing.
template <typename Rows, typename Sink>
void plan_launches(const Rows& rows, const PlanLimits& limits, Sink& sink) {
    std::int64_t groups[kMaxLaunchGroups];
    std::int32_t n_slots = 0, n_groups = 0, n_blocks = 0;
    const std::int32_t max_groups =
        limits.max_groups < kMaxLaunchGroups ? limits.max_groups : kMaxLaunchGroups;
    auto flush = [&] {
        if (n_slots > 0) sink.launch(n_slots, n_groups, n_blocks);
        n_slots = n_groups = n_blocks = 0;
    };
    const std::int64_t n_rows = rows.count();
    for (std::int64_t r = 0; r < n_rows; ++r) {
        if (!rows.included(r)) continue;
        const std::int64_t numel = rows.numel(r);
        if (numel <= 0) continue;
        const std::int64_t chunks = (numel + limits.chunk - 1) / limits.chunk;
        const std::int64_t group = rows.group(r);
        for (std::int64_t done = 0; done < chunks;) {
            if (n_slots == limits.max_slots || n_blocks == limits.max_blocks) flush();
            std::int32_t group_slot = -1;
            for (std::int32_t k = 0; k < n_groups; ++k) {
                if (groups[k] == group) group_slot = k;
            }
            if (group_slot < 0) {
                if (n_groups == max_groups) flush();
                group_slot = n_groups++;
                groups[group_slot] = group;
                sink.group(group_slot, group);
            }
            const std::int64_t room = limits.max_blocks - n_blocks;
            const std::int64_t take = chunks - done < room ? chunks - done : room;
            sink.slot(n_slots, r, group_slot, done, n_blocks);
            ++n_slots;
            n_blocks += static_cast<std::int32_t>(take);
            done += take;
        }
    }
    flush();
}

// The part of a sink every launch struct shares: filling its LaunchMap.
template <int Slots>
PYLR_HD void map_slot(LaunchMap<Slots>& map, std::int32_t slot, std::int64_t numel,
                      std::int64_t first_chunk, std::int32_t first_block) {
    map.numel[slot] = numel;
    map.first_chunk[slot] = first_chunk;
    map.block_start[slot] = first_block;
}

template <int Slots>
PYLR_HD void map_close(LaunchMap<Slots>& map, std::int32_t n_slots, std::int32_t n_blocks,
                       std::int64_t chunk) {
    map.n_slots = n_slots;
    map.block_start[n_slots] = n_blocks;
    map.chunk = chunk;
}

}  // namespace cuda
}  // namespace pylr
