// SPDX-License-Identifier: BSL-1.0
// Two pieces of completion plumbing every multi-step operation of the driver
// uses: delivering a result without ever running a handler inside the call
// that started the operation, and waiting for a group of operations started
// together.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/append.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <cassert>
#include <system_error>
#include <utility>

namespace qed::detail {

/// Invoke `handler(args...)` on `ex` (or the handler's own associated
/// executor). When `inside_initiation` -- the result is known while the call
/// that started the operation is still running -- it goes through the
/// executor's queue, so the handler never runs inside that call; otherwise it
/// is dispatched at once.
template <class Handler, class... Args>
void complete_never_inline(const boost::asio::any_io_executor& ex, bool inside_initiation, Handler&& handler,
                           Args&&... args) {
    auto bound = boost::asio::append(std::forward<Handler>(handler), std::forward<Args>(args)...);
    if (inside_initiation)
        boost::asio::post(ex, std::move(bound));
    else
        boost::asio::dispatch(ex, std::move(bound));
}

/// A group of operations started together, completing when the last one
/// does; remembers the first error. Usage:
///
///     group.open();
///     for (...) start_io(..., [this](std::error_code ec) { if (group.done(ec)) next(group.error()); });
///     if (group.close()) next(group.error());   // nothing was pending
///
/// open() takes a guard count, so completions that arrive while operations
/// are still being started cannot end the group early; close() drops it.
class fan_in {
public:
    void open() noexcept {
        assert(pending_ == 0);  // one group at a time
        pending_ = 1;
        error_ = {};
    }
    /// One more operation of the group is about to start.
    void add() noexcept { ++pending_; }
    /// An operation of the group completed (or was not started after add()):
    /// true when it was the last and close() has been called.
    bool done(std::error_code ec) noexcept {
        assert(pending_ > 0);  // never more completions than operations
        if (ec && !error_) error_ = ec;
        return --pending_ == 0;
    }
    /// Every operation is started: true when none is still pending.
    bool close() noexcept { return done({}); }
    std::error_code error() const noexcept { return error_; }
    bool idle() const noexcept { return pending_ == 0; }

private:
    unsigned pending_ = 0;
    std::error_code error_;
};

}  // namespace qed::detail
