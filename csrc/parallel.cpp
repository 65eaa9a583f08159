// The persistent pool behind parallel_for. Between jobs workers spin briefly, then sleep on a
// condition variable; each job bumps a generation counter, and sleeping workers are woken for a
// large job or for back-to-back jobs only (see kWakeMinElements).
//
// After fork() (DataLoader workers, multiprocessing) the child has none of the parent's threads
// and may inherit a locked mutex, so a child process abandons the inherited state and builds a
// fresh pool on first use.
#include "parallel.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include <unistd.h>

namespace pylr {
namespace {

// How long an idle worker spins before it sleeps: long enough to stay hot between the steps of
// a tight loop, short enough not to steal a core from torch's own threads for long.
constexpr auto kSpinFor = std::chrono::microseconds(50);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

// A job's chunks are claimed through one atomic word, the ticket: the job's chunk count in the
// high 32 bits, its next unclaimed chunk in the low 32. A thread claims chunk k with a CAS from
// (count, k) to (count, k + 1), k < count, and that CAS is the whole claim:
// - The word is claimable (next < count) only while a job is posted and has chunks left. Between
//   jobs it is full: a job's last claim leaves it (count, count), and run() posts the next job
//   by storing (count', 0) only after it has stored the job's description. So a CAS that
//   succeeds claims a chunk of the job posted at that instant, whatever the thread read before;
//   even a word left from an older job that happens to equal the current one names the same
//   chunk of the current job. The count checked is the count in the swapped word: never one
//   loaded separately, which a thread late from the previous job could pair with a stale ticket
//   and claim chunks of the next job before it is posted (they would run twice).
// - The CAS acquires the release store that posted the job, so the job_ read after it is that
//   job's; and no later job can be posted before this chunk is finished, because run() returns
//   only when done_ counts every chunk other threads claimed.
// - Fields cannot overflow: next <= count < 2^32 (a claim needs next < count), and a call of
//   more chunks runs as consecutive jobs of at most kMaxJobChunks.
// The caller claims chunks too and waits only for chunks that other threads have claimed: a
// worker the OS has not run yet (torch's OpenMP threads may still be spinning on the other core)
// delays nothing, its chunks are simply taken by the caller.
#ifdef PYLR_POOL_MAX_JOB_CHUNKS
// a small limit, for the test that exercises calls split into several jobs
constexpr std::size_t kMaxJobChunks = PYLR_POOL_MAX_JOB_CHUNKS;
#else
constexpr std::size_t kMaxJobChunks = 0xffffffffu;
#endif
static_assert(kMaxJobChunks >= 1 && kMaxJobChunks <= 0xffffffffu, "the ticket counts in 32 bits");

constexpr std::uint64_t posted_ticket(std::size_t n_chunks) {
    return static_cast<std::uint64_t>(n_chunks) << 32;
}
constexpr std::size_t ticket_count(std::uint64_t t) { return static_cast<std::size_t>(t >> 32); }
constexpr std::size_t ticket_next(std::uint64_t t) {
    return static_cast<std::size_t>(t & 0xffffffffu);
}

// What a claimed chunk runs: chunk k of the job is chunk first_chunk + k of the call.
struct Job {
    const ChunkFn* fn;
    std::size_t first_chunk;
};

class ThreadPool {
  public:
    explicit ThreadPool(int n_threads) { start_workers(n_threads); }
    ~ThreadPool() { stop_workers(); }

    void run(std::size_t n_chunks, const ChunkFn& fn, bool wake_sleepers,
             const std::function<void()>* caller_first) {
        std::lock_guard<std::mutex> serial(run_mutex_);
        if (workers_.empty() || n_chunks <= 1) {
            if (caller_first != nullptr) (*caller_first)();
            for (std::size_t i = 0; i < n_chunks; ++i) fn(i);
            return;
        }
        for (std::size_t first = 0; first < n_chunks;) {
            const std::size_t count = std::min(kMaxJobChunks, n_chunks - first);
            run_job(Job{&fn, first}, count, wake_sleepers, first == 0 ? caller_first : nullptr);
            first += count;
        }
    }

    int size() const noexcept { return n_threads_.load(std::memory_order_relaxed); }

    std::uint64_t wake_requests() const noexcept { return wake_requests_.load(); }

    // Wakes sleeping workers so that they spin, ready for a job about to be posted.
    void prepare() {
        wake_requests_.fetch_add(1, std::memory_order_relaxed);
        if (sleepers_.load() > 0) {
            std::lock_guard<std::mutex> lock(mutex_);
            ++wake_hint_;
            wake_.notify_all();
        }
    }

    void resize(int n_threads) {
        std::lock_guard<std::mutex> serial(run_mutex_);
        stop_workers();
        start_workers(n_threads);
    }

  private:
    // Posts one job of `count` chunks, runs caller_first (if any), takes part in the job, and
    // returns when all its chunks are done.
    void run_job(const Job& job, std::size_t count, bool wake_sleepers,
                 const std::function<void()>* caller_first) {
        job_.store(&job, std::memory_order_relaxed);
        done_.store(0, std::memory_order_relaxed);
        ticket_.store(posted_ticket(count), std::memory_order_release);  // posts the job
        generation_.fetch_add(1);  // seq_cst: pairs with the sleepers_ check below
        // Back-to-back jobs (the last ended within a spin window) keep the workers hot even for
        // small jobs; after a longer pause (forward and backward ran in between) only a large
        // job wakes them.
        const auto now = std::chrono::steady_clock::now();
        const bool back_to_back = now - last_end_ < kSpinFor;
        if (wake_sleepers || back_to_back) {
            wake_requests_.fetch_add(1, std::memory_order_relaxed);
            if (sleepers_.load() > 0) {
                std::lock_guard<std::mutex> lock(mutex_);
                wake_.notify_all();
            }
        }
        if (caller_first != nullptr) (*caller_first)();  // the workers take chunks meanwhile
        const std::size_t by_others = count - work_on();
        // chunks claimed by other threads and still running
        for (unsigned spins = 0; done_.load(std::memory_order_acquire) != by_others; ++spins) {
            if (spins < 4096) {
                cpu_relax();
            } else {
                std::this_thread::yield();
            }
        }
        last_end_ = std::chrono::steady_clock::now();
    }

    // Claims and runs chunks of the posted job until none is left; returns how many it ran. All
    // of them belong to one job: none can be posted while a chunk it claimed is uncounted.
    std::size_t work_on() {
        std::size_t ran = 0;
        std::uint64_t t = ticket_.load(std::memory_order_relaxed);
        while (ticket_next(t) < ticket_count(t)) {
            if (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acquire,
                                               std::memory_order_relaxed)) {
                continue;  // t now holds the current word
            }
            const Job& job = *job_.load(std::memory_order_relaxed);  // ordered by the CAS
            (*job.fn)(job.first_chunk + ticket_next(t));
            ++ran;
            t = ticket_.load(std::memory_order_relaxed);
        }
        return ran;
    }

    // Waits for a generation other than `seen`: spins for kSpinFor, then sleeps. A wake-up hint
    // (prepare()) sends a sleeping worker back to spinning.
    std::uint64_t wait_for_job(std::uint64_t seen) {
        for (;;) {
            const auto deadline = std::chrono::steady_clock::now() + kSpinFor;
            for (unsigned spins = 0;; ++spins) {
                const std::uint64_t g = generation_.load(std::memory_order_acquire);
                if (g != seen || stop_.load(std::memory_order_relaxed)) return g;
                if ((spins & 63u) == 63u && std::chrono::steady_clock::now() > deadline) break;
                cpu_relax();
            }
            std::unique_lock<std::mutex> lock(mutex_);
            const std::uint64_t hint = wake_hint_;
            sleepers_.fetch_add(1);  // seq_cst: pairs with the generation store in run_job()
            wake_.wait(lock, [&] {
                return stop_.load() || generation_.load() != seen || wake_hint_ != hint;
            });
            sleepers_.fetch_sub(1);
            const std::uint64_t g = generation_.load(std::memory_order_acquire);
            if (g != seen || stop_.load()) return g;
        }
    }

    void worker_loop(std::uint64_t seen) {
        for (;;) {
            seen = wait_for_job(seen);
            if (stop_.load()) return;
            // the generation only wakes the worker; the ticket says whether there is work
            const std::size_t ran = work_on();
            if (ran > 0) done_.fetch_add(ran, std::memory_order_release);
        }
    }

    void start_workers(int n_threads) {
        stop_.store(false);
        const int n_workers = std::min(std::max(1, n_threads), kMaxThreads) - 1;
        const std::uint64_t current = generation_.load();
        for (int i = 0; i < n_workers; ++i) {
            try {
                workers_.emplace_back([this, current] { worker_loop(current); });
            } catch (...) {  // out of threads or memory: the pool runs on those it has
                break;
            }
        }
        n_threads_.store(static_cast<int>(workers_.size()) + 1, std::memory_order_relaxed);
    }

    void stop_workers() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_.store(true);
        }
        wake_.notify_all();
        for (auto& w : workers_) w.join();
        workers_.clear();
    }

    std::mutex run_mutex_;  // one job (or resize) at a time
    std::mutex mutex_;      // for sleeping workers
    std::condition_variable wake_;
    std::vector<std::thread> workers_;  // guarded by run_mutex_ (after construction)
    std::atomic<int> n_threads_{1};     // workers_.size() + 1, readable without run_mutex_
    // claimed by every thread for every chunk: a cache line of its own
    alignas(64) std::atomic<std::uint64_t> ticket_{0};
    std::atomic<const Job*> job_{nullptr};
    alignas(64) std::atomic<std::size_t> done_{0};  // chunks finished by workers this job
    alignas(64) std::atomic<std::uint64_t> generation_{0};
    std::atomic<bool> stop_{false};
    std::atomic<int> sleepers_{0};
    std::atomic<std::uint64_t> wake_requests_{0};  // jobs and hints that asked workers to wake
    std::uint64_t wake_hint_ = 0;  // guarded by mutex_
    std::chrono::steady_clock::time_point last_end_{};  // guarded by run_mutex_
};

int default_thread_count() noexcept {
    const unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw);
}

std::mutex g_pool_mutex;
ThreadPool* g_pool = nullptr;
pid_t g_pool_pid = 0;
int g_requested_threads = 0;  // 0: the hardware default

ThreadPool& pool() {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    if (g_pool != nullptr && g_pool_pid != getpid()) {
        // Inherited through fork(): its threads do not exist here. Leak it deliberately;
        // destroying it would join threads that are gone.
        g_pool = nullptr;
    }
    if (g_pool == nullptr) {
        g_pool = new ThreadPool(g_requested_threads > 0 ? g_requested_threads
                                                        : default_thread_count());
        g_pool_pid = getpid();
    }
    return *g_pool;
}

}  // namespace

void parallel_for(std::size_t n_chunks, const ChunkFn& fn, bool wake_sleepers,
                  const std::function<void()>* caller_first) noexcept {
    pool().run(n_chunks, fn, wake_sleepers, caller_first);
}

int get_num_threads() noexcept { return pool().size(); }

std::uint64_t pool_wake_requests() noexcept { return pool().wake_requests(); }

void prepare_threads(std::size_t elements) noexcept {
    if (elements >= kWakeMinElements) pool().prepare();
}

int set_num_threads(int n) noexcept {
    n = std::min(std::max(1, n), kMaxThreads);
    ThreadPool& p = pool();
    {
        std::lock_guard<std::mutex> lock(g_pool_mutex);
        g_requested_threads = n;
    }
    p.resize(n);
    return p.size();
}

}  // namespace pylr
