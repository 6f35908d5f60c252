// SPDX-License-Identifier: BSL-1.0
// A process-wide thread pool for system calls that would block the event
// loop: pread/pwrite of the threads backend, and fdatasync/ftruncate, which
// boost::asio::random_access_file only offers synchronously.
#pragma once

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <memory>
#include <thread>
#include <utility>

namespace qed::detail {

/// The shared pool; alive while any file holds the pointer.
std::shared_ptr<boost::asio::thread_pool> blocking_pool();

/// From a thread that does not run `target` (a pool or system thread), run
/// `f` on `target`, keeping `keep` (the tracked form of `target`, so its
/// io_context doesn't run out of work meanwhile) until after `f` ran.
///
/// An application may destroy its io_context as soon as the last handler it
/// waits for has run. So neither the tracked work nor the posting itself may
/// touch the io_context after `f` could have run: `keep` is released on
/// `target`, after `f`, and `f` waits until this thread has returned from
/// handing it over (Asio signals the io_context's condition variable after
/// queueing the handler; ThreadSanitizer saw a test destroy it in between).
/// If `target` runs `f` inline, on this thread, there is nothing to wait for.
template <class Executor, class Keep, class F>
void hand_over(const Executor& target, Keep keep, F f) {
    struct gate {
        std::atomic<bool> posted{false};
        std::thread::id poster = std::this_thread::get_id();
    };
    auto g = std::make_shared<gate>();
    target.execute([g, keep = std::move(keep), f = std::move(f)]() mutable {
        if (std::this_thread::get_id() != g->poster) g->posted.wait(false);
        std::move(f)();
        auto release = std::move(keep);
    });
    g->posted.store(true);
    g->posted.notify_one();
}

/// Run `work()` (returning a result) on `where` (the pool, or a strand on
/// it that keeps one file's calls in order), then call `done(result)` on
/// `ex`. `ex` counts as busy meanwhile, so its io_context does not run out of
/// work; see hand_over() for how the pool thread lets go of it.
template <class Where, class Work, class Done>
void run_blocking_on(const Where& where, const boost::asio::any_io_executor& ex, Work work, Done done) {
    auto tracked = boost::asio::prefer(ex, boost::asio::execution::outstanding_work.tracked);
    boost::asio::post(where, [tracked = std::move(tracked), work = std::move(work), done = std::move(done)]() mutable {
        auto result = work();
        const auto target = boost::asio::prefer(tracked, boost::asio::execution::outstanding_work.untracked,
                                                boost::asio::execution::relationship.fork);
        hand_over(target, std::move(tracked), [done = std::move(done), result = std::move(result)]() mutable {
            std::move(done)(std::move(result));
        });
    });
}

/// run_blocking_on() the pool itself.
template <class Work, class Done>
void run_blocking(boost::asio::thread_pool& pool, const boost::asio::any_io_executor& ex, Work work, Done done) {
    run_blocking_on(pool.get_executor(), ex, std::move(work), std::move(done));
}

}  // namespace qed::detail
