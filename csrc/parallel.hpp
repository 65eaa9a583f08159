// A small persistent thread pool: no OpenMP runtime of its own beside torch's, no fork/join of
// fresh threads per call. The caller takes part in the work, so a pool of size 1 runs inline.
#pragma once

#include <cstddef>
#include <functional>

namespace pylr {

using ChunkFn = std::function<void(std::size_t chunk)>;

// Runs fn(chunk) for every chunk in [0, n_chunks), spread over the pool's threads. Returns when
// all chunks are done. fn must not throw. Safe to call from several threads (calls serialise).
void parallel_for(std::size_t n_chunks, const ChunkFn& fn) noexcept;

// Wakes idle workers so that they are spinning when a parallel_for comes shortly after (call it
// before preparing a step in Python; it overlaps the OS wake-up with that work).
void prepare_threads() noexcept;

// The number of threads parallel_for uses, the caller included (>= 1).
int get_num_threads() noexcept;
// Changes it; n < 1 is treated as 1. Waits for a running parallel_for to finish first.
void set_num_threads(int n) noexcept;

}  // namespace pylr
