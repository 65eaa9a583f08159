// The persistent pool behind parallel_for. Workers sleep on a condition variable between jobs;
// each job bumps a generation counter, and every worker takes part in every generation (maybe
// with zero chunks), so the caller can wait for all of them and no worker ever sees a stale job.
//
// After fork() (DataLoader workers, multiprocessing) the child has none of the parent's threads
// and may inherit a locked mutex, so a child process abandons the inherited state and builds a
// fresh pool on first use.
#include "parallel.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include <unistd.h>

namespace pylr {
namespace {

class ThreadPool {
  public:
    explicit ThreadPool(int n_threads) { start_workers(n_threads); }
    ~ThreadPool() { stop_workers(); }

    void run(std::size_t n_chunks, const ChunkFn& fn) {
        std::lock_guard<std::mutex> serial(run_mutex_);
        if (workers_.empty() || n_chunks <= 1) {
            for (std::size_t i = 0; i < n_chunks; ++i) fn(i);
            return;
        }
        {
            std::lock_guard<std::mutex> lock(mutex_);
            fn_ = &fn;
            n_chunks_ = n_chunks;
            next_.store(0, std::memory_order_relaxed);
            active_ = workers_.size();
            ++generation_;
        }
        wake_.notify_all();
        take_chunks(fn, n_chunks);
        std::unique_lock<std::mutex> lock(mutex_);
        done_.wait(lock, [this] { return active_ == 0; });
        fn_ = nullptr;
    }

    int size() const noexcept { return static_cast<int>(workers_.size()) + 1; }

    void resize(int n_threads) {
        std::lock_guard<std::mutex> serial(run_mutex_);
        stop_workers();
        start_workers(n_threads);
    }

  private:
    void take_chunks(const ChunkFn& fn, std::size_t n_chunks) {
        for (std::size_t i = next_.fetch_add(1, std::memory_order_relaxed); i < n_chunks;
             i = next_.fetch_add(1, std::memory_order_relaxed)) {
            fn(i);
        }
    }

    // `seen` is the generation current when the worker was created: a job posted before the
    // thread first runs is still one it must take part in.
    void worker_loop(std::uint64_t seen) {
        for (;;) {
            const ChunkFn* fn = nullptr;
            std::size_t n_chunks = 0;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
                if (stop_) return;
                seen = generation_;
                fn = fn_;
                n_chunks = n_chunks_;
            }
            take_chunks(*fn, n_chunks);
            std::lock_guard<std::mutex> lock(mutex_);
            if (--active_ == 0) done_.notify_one();
        }
    }

    void start_workers(int n_threads) {
        stop_ = false;
        const int n_workers = std::max(1, n_threads) - 1;
        workers_.reserve(static_cast<std::size_t>(n_workers));
        const std::uint64_t current = generation_;
        for (int i = 0; i < n_workers; ++i) {
            workers_.emplace_back([this, current] { worker_loop(current); });
        }
    }

    void stop_workers() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
        }
        wake_.notify_all();
        for (auto& w : workers_) w.join();
        workers_.clear();
    }

    std::mutex run_mutex_;  // one job (or resize) at a time
    std::mutex mutex_;      // guards everything below except next_
    std::condition_variable wake_;
    std::condition_variable done_;
    std::vector<std::thread> workers_;
    std::uint64_t generation_ = 0;
    bool stop_ = false;
    const ChunkFn* fn_ = nullptr;
    std::size_t n_chunks_ = 0;
    std::size_t active_ = 0;
    std::atomic<std::size_t> next_{0};
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

void parallel_for(std::size_t n_chunks, const ChunkFn& fn) noexcept { pool().run(n_chunks, fn); }

int get_num_threads() noexcept { return pool().size(); }

void set_num_threads(int n) noexcept {
    ThreadPool& p = pool();
    {
        std::lock_guard<std::mutex> lock(g_pool_mutex);
        g_requested_threads = std::max(1, n);
    }
    p.resize(std::max(1, n));
}

}  // namespace pylr
