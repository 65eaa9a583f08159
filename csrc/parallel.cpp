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

// Chunks are claimed through one atomic ticket, (generation << 32) | next chunk, so a worker can
// only ever claim a chunk of the job that is current. The caller claims chunks too and waits
// only for chunks other threads have claimed and not finished: a worker the OS has not run yet
// (torch's OpenMP threads may still be spinning on the other core) delays nothing, its chunks
// are simply taken by the caller.
class ThreadPool {
  public:
    explicit ThreadPool(int n_threads) { start_workers(n_threads); }
    ~ThreadPool() { stop_workers(); }

    void run(std::size_t n_chunks, const ChunkFn& fn, bool wake_sleepers) {
        std::lock_guard<std::mutex> serial(run_mutex_);
        if (workers_.empty() || n_chunks <= 1) {
            for (std::size_t i = 0; i < n_chunks; ++i) fn(i);
            return;
        }
        const std::uint64_t g = (generation_.load(std::memory_order_relaxed) + 1) & 0xffffffffu;
        fn_.store(&fn, std::memory_order_relaxed);
        n_chunks_.store(n_chunks, std::memory_order_relaxed);
        ticket_.store(g << 32, std::memory_order_release);
        generation_.store(g);  // seq_cst: pairs with the sleepers_ check below
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
        work_on(g);
        // chunks claimed by a worker and still running
        for (unsigned spins = 0; in_flight_.load(std::memory_order_acquire) != 0; ++spins) {
            if (spins < 4096) {
                cpu_relax();
            } else {
                std::this_thread::yield();
            }
        }
        last_end_ = std::chrono::steady_clock::now();
    }

    int size() const noexcept { return static_cast<int>(workers_.size()) + 1; }

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
    // Claims and runs chunks of job g until none is left.
    void work_on(std::uint64_t g) {
        for (;;) {
            in_flight_.fetch_add(1, std::memory_order_acq_rel);
            std::uint64_t t = ticket_.load(std::memory_order_acquire);
            bool claimed = false;
            while ((t >> 32) == g && (t & 0xffffffffu) < n_chunks_.load(std::memory_order_acquire)) {
                if (ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel)) {
                    claimed = true;
                    break;
                }
            }
            if (!claimed) {
                in_flight_.fetch_sub(1, std::memory_order_acq_rel);
                return;
            }
            // the job cannot change while one of its chunks is claimed and unfinished
            (*fn_.load(std::memory_order_acquire))(static_cast<std::size_t>(t & 0xffffffffu));
            in_flight_.fetch_sub(1, std::memory_order_acq_rel);
        }
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
            sleepers_.fetch_add(1);  // seq_cst: pairs with the generation store in run()
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
            work_on(seen);
        }
    }

    void start_workers(int n_threads) {
        stop_.store(false);
        const int n_workers = std::max(1, n_threads) - 1;
        workers_.reserve(static_cast<std::size_t>(n_workers));
        const std::uint64_t current = generation_.load();
        for (int i = 0; i < n_workers; ++i) {
            workers_.emplace_back([this, current] { worker_loop(current); });
        }
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
    std::vector<std::thread> workers_;
    std::atomic<std::uint64_t> generation_{0};
    std::atomic<std::uint64_t> ticket_{0};
    std::atomic<std::size_t> n_chunks_{0};
    std::atomic<const ChunkFn*> fn_{nullptr};
    std::atomic<int> in_flight_{0};
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

void parallel_for(std::size_t n_chunks, const ChunkFn& fn, bool wake_sleepers) noexcept {
    pool().run(n_chunks, fn, wake_sleepers);
}

int get_num_threads() noexcept { return pool().size(); }

std::uint64_t pool_wake_requests() noexcept { return pool().wake_requests(); }

void prepare_threads(std::size_t elements) noexcept {
    if (elements >= kWakeMinElements) pool().prepare();
}

void set_num_threads(int n) noexcept {
    ThreadPool& p = pool();
    {
        std::lock_guard<std::mutex> lock(g_pool_mutex);
        g_requested_threads = std::max(1, n);
    }
    p.resize(std::max(1, n));
}

}  // namespace pylr
