// A process-wide thread pool for system calls that would block the event
// loop: pread/pwrite of the threads backend, and fdatasync/ftruncate, which
// boost::asio::random_access_file only offers synchronously.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include <memory>
#include <utility>

namespace qed::detail {

/// The shared pool; alive while any file holds the pointer.
std::shared_ptr<boost::asio::thread_pool> blocking_pool();

/// Run `work()` (returning a result) on `pool`, then call `done(result)` on
/// `ex`. `ex` counts as busy meanwhile, so its io_context does not run out of
/// work. That outstanding work is released on `ex`, after `done` ran, never
/// on a pool thread: an application that stops running its io_context once
/// its own condition holds may destroy it right away.
template <class Work, class Done>
void run_blocking(boost::asio::thread_pool& pool, const boost::asio::any_io_executor& ex, Work work, Done done) {
    auto tracked = boost::asio::prefer(ex, boost::asio::execution::outstanding_work.tracked);
    boost::asio::post(pool, [tracked = std::move(tracked), work = std::move(work), done = std::move(done)]() mutable {
        auto result = work();
        const auto target = boost::asio::prefer(tracked, boost::asio::execution::outstanding_work.untracked);
        boost::asio::post(target, [tracked = std::move(tracked), done = std::move(done),
                                   result = std::move(result)]() mutable {
            std::move(done)(std::move(result));
            auto release = std::move(tracked);
        });
    });
}

}  // namespace qed::detail
