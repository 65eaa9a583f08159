// A small persistent thread pool: no OpenMP runtime of its own beside torch's, no fork/join of
// fresh threads per call. The caller takes part in the work, so a pool of size 1 runs inline.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

namespace pylr {

using ChunkFn = std::function<void(std::size_t chunk)>;

// Jobs of at least this many elements are worth waking sleeping workers for. Below it workers
// take part only in back-to-back calls (the previous job ended within their spin window): inside
// a real training loop they have gone to sleep during forward/backward, and waking them costs
// more than it saves while torch's OpenMP threads hold the other cores (a wake-up that lands on
// the caller's core even preempts the caller).
constexpr std::size_t kWakeMinElements = std::size_t{1} << 20;

// Runs fn(chunk) exactly once for every chunk in [0, n_chunks), spread over the pool's threads.
// Returns when all chunks are done, with everything they wrote visible to the caller. fn must not
// throw, nor call parallel_for itself. Safe to call from several threads (calls serialise).
// With wake_sleepers false, sleeping workers are left asleep (the caller does their share).
// caller_first, where given, runs exactly once on the calling thread before it takes chunks: with
// workers, once the job is posted, so that its work overlaps theirs; alone, before the chunks.
// It must not throw, nor call parallel_for.
void parallel_for(std::size_t n_chunks, const ChunkFn& fn, bool wake_sleepers = true,
                  const std::function<void()>* caller_first = nullptr) noexcept;

// Wakes idle workers so that they are spinning when a parallel_for over `elements` elements
// comes shortly after (call it before preparing a step in Python; it overlaps the OS wake-up
// with that work). Does nothing below kWakeMinElements.
void prepare_threads(std::size_t elements) noexcept;

// How many jobs and hints so far asked sleeping workers to wake (whether or not one slept): the
// wake-up policy, observable by tests.
std::uint64_t pool_wake_requests() noexcept;

// The number of threads parallel_for uses, the caller included (>= 1).
int get_num_threads() noexcept;
// The most threads the pool runs.
constexpr int kMaxThreads = 1024;

// Changes it to n clamped to [1, kMaxThreads]; waits for a running parallel_for to finish
// first. Returns the number the pool now has: fewer than asked where the system refused to
// start more threads.
int set_num_threads(int n) noexcept;

}  // namespace pylr
