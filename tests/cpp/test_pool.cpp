// A stress test of the thread pool (csrc/parallel.cpp) on its own: no Python, no pybind11. It is
// meant to run under ThreadSanitizer and under AddressSanitizer/UBSan (.ci/cpp-tests does both).
//
// Every chunk increments a plain, non-atomic counter of its own. A chunk that runs twice shows
// as a count of 2 and, under TSan, as a data race; a chunk that never runs shows as 0; a count
// read before the chunk's writes are visible is a TSan race too. An occupancy word catches a
// chunk that runs while a chunk of another call is running (calls must serialise), and a flag
// per call catches a chunk that runs outside its own parallel_for.
//
// Exits 0 when every check passed, 1 otherwise. Usage: test_pool [seed]
#include "parallel.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <thread>
#include <vector>

namespace {

std::atomic<int> g_failures{0};

template <typename... Args>
void fail(const char* format, Args... args) {
    if (g_failures.fetch_add(1) < 20) {
        std::fprintf(stderr, "FAIL: ");
        std::fprintf(stderr, format, args...);
        std::fprintf(stderr, "\n");
    }
}

void fail(const char* message) { fail("%s", message); }

// splitmix64: a small deterministic generator, one per thread
struct Random {
    std::uint64_t state;
    std::uint64_t next() {
        std::uint64_t z = (state += 0x9e3779b97f4a7c15u);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
        return z ^ (z >> 31);
    }
    std::size_t below(std::size_t n) { return static_cast<std::size_t>(next() % n); }
};

// Chunk counts a job may have: none, one (runs inline), the small and odd ones that stress the
// last claims, and large ones.
std::size_t random_chunk_count(Random& r) {
    static const std::size_t kCounts[] = {0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64,
                                          65, 127, 255, 1000, 4097};
    constexpr std::size_t kKinds = sizeof(kCounts) / sizeof(kCounts[0]);
    if (r.below(200) == 0) return 20000 + r.below(30000);
    return kCounts[r.below(kKinds)];
}

// (call id << 32) | chunks of that call running now: chunks of two calls never overlap.
std::atomic<std::uint64_t> g_occupant{0};

bool enter_call(std::uint32_t call) {
    std::uint64_t o = g_occupant.load();
    for (;;) {
        const std::uint64_t running = o & 0xffffffffu;
        if (running != 0 && (o >> 32) != call) return false;
        if (g_occupant.compare_exchange_weak(o, (std::uint64_t{call} << 32) | (running + 1))) {
            return true;
        }
    }
}

void leave_call() { g_occupant.fetch_sub(1); }

std::atomic<std::uint32_t> g_next_call_id{1};
std::atomic<std::uint64_t> g_jobs{0};
std::atomic<std::uint64_t> g_chunks{0};
std::atomic<std::uint64_t> g_chunks_by_workers{0};

// One caller's reusable bookkeeping: a counter per chunk and the id of the call in progress.
struct Caller {
    std::vector<std::uint32_t> runs;
    std::atomic<std::uint32_t> active_call{0};
    Random random;

    explicit Caller(std::uint64_t seed) : random{seed} {}

    // Runs one parallel_for of n chunks and checks that each chunk ran exactly once, inside
    // the call. Each chunk spins for up to `work_ns`. Returns how many chunks workers ran.
    std::uint64_t run_job(std::size_t n, bool wake_sleepers, unsigned work_ns = 0) {
        runs.assign(n, 0);
        const std::uint32_t call = g_next_call_id.fetch_add(1);
        const std::thread::id caller = std::this_thread::get_id();
        std::atomic<std::uint64_t> by_workers{0};
        // a caller_first in a third of the jobs: it must run once, on the caller, before the
        // caller's first chunk; sometimes for a while, so that workers take chunks meanwhile
        const bool with_first = random.below(3) == 0;
        const unsigned first_ns = random.below(2) == 0 ? 20000 : 0;
        unsigned first_runs = 0;  // plain: only the caller touches it
        const std::function<void()> first = [&, call] {
            if (std::this_thread::get_id() != caller) {
                fail("call %u: caller_first ran on a worker", call);
            }
            if (active_call.load() != call) fail("call %u: caller_first outside its call", call);
            ++first_runs;
            const auto until =
                std::chrono::steady_clock::now() + std::chrono::nanoseconds(first_ns);
            while (std::chrono::steady_clock::now() < until) {
            }
        };
        active_call.store(call);
        const pylr::ChunkFn fn = [&, call, n](std::size_t chunk) {
            if (active_call.load() != call) fail("call %u: a chunk ran outside its call", call);
            if (with_first && std::this_thread::get_id() == caller && first_runs != 1) {
                fail("call %u: the caller took a chunk before caller_first", call);
            }
            if (chunk >= n) {
                fail("call %u: chunk %zu of %zu chunks", call, chunk, n);
                return;
            }
            const bool entered = enter_call(call);
            if (!entered) fail("call %u: a chunk ran beside a chunk of another call", call);
            ++runs[chunk];
            if (std::this_thread::get_id() != caller) by_workers.fetch_add(1);
            if (work_ns > 0) {
                const auto until = std::chrono::steady_clock::now() +
                                   std::chrono::nanoseconds(chunk_work_ns(chunk, work_ns));
                while (std::chrono::steady_clock::now() < until) {
                }
            }
            if (entered) leave_call();
        };
        pylr::parallel_for(n, fn, wake_sleepers, with_first ? &first : nullptr);
        active_call.store(0);
        if (with_first && first_runs != 1) {
            fail("call %u: caller_first ran %u times", call, first_runs);
        }
        for (std::size_t c = 0; c < n; ++c) {
            if (runs[c] != 1) {
                fail("call %u: chunk %zu of %zu ran %u times", call, c, n, runs[c]);
                break;
            }
        }
        g_jobs.fetch_add(1);
        g_chunks.fetch_add(n);
        g_chunks_by_workers.fetch_add(by_workers.load());
        return by_workers.load();
    }

    // uneven chunk durations, so that claims interleave differently from job to job
    static unsigned chunk_work_ns(std::size_t chunk, unsigned work_ns) {
        return static_cast<unsigned>((chunk * 2654435761u) % (work_ns + 1));
    }
};

void set_threads(int n) {
    pylr::set_num_threads(n);
    if (pylr::get_num_threads() != n) {
        fail("set_num_threads(%d), get_num_threads() == %d", n, pylr::get_num_threads());
    }
}

void sleep_us(unsigned us) { std::this_thread::sleep_for(std::chrono::microseconds(us)); }

// Thousands of jobs back to back at several pool sizes (oversubscribed ones included: 2 cores
// are common here, and preemption at any instruction is what opens race windows).
void test_back_to_back(std::uint64_t seed) {
    Caller c(seed);
    for (const int threads : {2, 3, 4, 8}) {
        set_threads(threads);
        for (int i = 0; i < 2500; ++i) {
            const std::size_t n = random_chunk_count(c.random);
            c.run_job(n, c.random.below(2) == 0, c.random.below(4) == 0 ? 2000 : 0);
        }
    }
}

// The pool size changes between jobs, including to 1 (everything inline) and back.
void test_resize_between_jobs(std::uint64_t seed) {
    Caller c(seed);
    for (int i = 0; i < 300; ++i) {
        set_threads(1 + static_cast<int>(c.random.below(6)));
        for (int j = 0; j < 3; ++j) c.run_job(random_chunk_count(c.random), true);
    }
}

// Several threads call parallel_for at once (calls serialise) while another resizes the pool
// and reads its size.
void test_concurrent_callers(std::uint64_t seed) {
    set_threads(3);
    std::atomic<bool> callers_done{false};
    std::thread resizer([&] {
        Random r{seed ^ 0x5eed};
        while (!callers_done.load()) {
            const int n = 1 + static_cast<int>(r.below(4));
            pylr::set_num_threads(n);
            const int got = pylr::get_num_threads();
            if (got < 1 || got > 4) fail("get_num_threads() == %d during resizes", got);
            sleep_us(500);
        }
    });
    std::vector<std::thread> callers;
    for (int t = 0; t < 4; ++t) {
        callers.emplace_back([seed, t] {
            Caller c(seed + 1000 + static_cast<std::uint64_t>(t));
            for (int i = 0; i < 600; ++i) {
                const int threads = pylr::get_num_threads();
                if (threads < 1 || threads > 4) fail("get_num_threads() == %d", threads);
                c.run_job(random_chunk_count(c.random), c.random.below(2) == 0,
                          c.random.below(8) == 0 ? 1000 : 0);
            }
        });
    }
    for (auto& t : callers) t.join();
    callers_done.store(true);
    resizer.join();
}

#ifdef PYLR_POOL_MAX_JOB_CHUNKS
constexpr std::size_t kMaxJobChunks = PYLR_POOL_MAX_JOB_CHUNKS;
#else
constexpr std::size_t kMaxJobChunks = 0xffffffffu;
#endif

// After a pause longer than the spin window the workers sleep: a small job with wake_sleepers
// false leaves them asleep and asks no wake-up (the caller runs every chunk); wake_sleepers
// true, or prepare_threads for a large step, asks one, and after wake_sleepers the workers take
// part. Whether they take part after prepare_threads is reported, not checked: a woken worker
// that the OS runs on the caller's core spins out its window while the caller waits for the core
// (the machine's other core busy), then sleeps again, and the job that follows does not wake it.
std::uint64_t g_chunks_after_prepare = 0;

void test_sleep_and_wake(std::uint64_t seed) {
    Caller c(seed);
    for (const int threads : {2, 3}) {
        set_threads(threads);
        std::uint64_t helped_after_wake = 0, helped_after_prepare = 0, back_to_back = 0;
        for (int i = 0; i < 40; ++i) {
            const std::size_t n = 1 + c.random.below(std::min<std::size_t>(64, kMaxJobChunks));

            sleep_us(300);
            std::uint64_t before = pylr::pool_wake_requests();
            c.run_job(n, false);
            if (n > 1 && pylr::pool_wake_requests() != before) {
                fail("a job with wake_sleepers false after a pause asked for a wake-up");
            }

            sleep_us(300);
            before = pylr::pool_wake_requests();
            helped_after_wake += c.run_job(64, true, 20000);
            if (pylr::pool_wake_requests() <= before) fail("wake_sleepers true asked no wake-up");

            sleep_us(300);
            before = pylr::pool_wake_requests();
            pylr::prepare_threads(pylr::kWakeMinElements - 1);
            if (pylr::pool_wake_requests() != before) fail("prepare_threads below the minimum");
            pylr::prepare_threads(pylr::kWakeMinElements);
            if (pylr::pool_wake_requests() != before + 1) fail("prepare_threads asked no wake-up");
            helped_after_prepare += c.run_job(64, false, 20000);

            // a job right after another counts as back to back (unless this thread was
            // descheduled for a spin window in between, hence a count, not a check per job)
            sleep_us(300);
            c.run_job(n, false);
            before = pylr::pool_wake_requests();
            c.run_job(2, false);
            if (n > 1 && pylr::pool_wake_requests() > before) ++back_to_back;
        }
        if (back_to_back == 0) fail("%d threads: no job was counted as back to back", threads);
        // 40 jobs of 64 chunks x up to 20 us each: a woken worker that never takes a chunk
        // means it was never woken
        if (helped_after_wake == 0) fail("%d threads: no worker took part after a wake", threads);
        g_chunks_after_prepare += helped_after_prepare;
    }
}

#if !defined(__SANITIZE_THREAD__)
// A child forked while the pool's workers run builds a pool of its own.
void test_fork(std::uint64_t seed) {
    set_threads(3);
    Caller c(seed);
    for (int i = 0; i < 20; ++i) c.run_job(257, true);
    const int failures_at_fork = g_failures.load();
    const pid_t pid = fork();
    if (pid < 0) {
        fail("fork failed");
        return;
    }
    if (pid == 0) {
        Caller child(seed + 1);
        for (int i = 0; i < 50; ++i) child.run_job(random_chunk_count(child.random), true);
        std::_Exit(g_failures.load() == failures_at_fork ? 0 : 1);
    }
    for (int i = 0; i < 20; ++i) c.run_job(257, true);
    int status = 0;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fail("the forked child failed (status %d)", status);
    }
}
#endif

}  // namespace

int main(int argc, char** argv) {
    const std::uint64_t seed =
        argc > 1 ? std::strtoull(argv[1], nullptr, 0)
                 : static_cast<std::uint64_t>(
                       std::chrono::steady_clock::now().time_since_epoch().count());
    std::printf("test_pool: seed %llu, max chunks per job %zu\n",
                static_cast<unsigned long long>(seed), kMaxJobChunks);
    const auto start = std::chrono::steady_clock::now();

    test_back_to_back(seed);
    test_resize_between_jobs(seed + 1);
    test_concurrent_callers(seed + 2);
    test_sleep_and_wake(seed + 3);
#if defined(__SANITIZE_THREAD__)
    // TSan does not support a child that starts threads after a multi-threaded fork
    std::printf("test_pool: fork test skipped under ThreadSanitizer\n");
#else
    test_fork(seed + 4);
#endif
    if (g_chunks_by_workers.load() == 0) fail("no chunk ever ran on a worker");

    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("test_pool: %llu jobs, %llu chunks (%llu run by workers, %llu right after "
                "prepare_threads) in %.1f s: %s\n",
                static_cast<unsigned long long>(g_jobs.load()),
                static_cast<unsigned long long>(g_chunks.load()),
                static_cast<unsigned long long>(g_chunks_by_workers.load()),
                static_cast<unsigned long long>(g_chunks_after_prepare), seconds,
                g_failures.load() == 0 ? "ok" : "FAILED");
    return g_failures.load() == 0 ? 0 : 1;
}
