// SPDX-License-Identifier: BSL-1.0
/// \file
/// `boost::asio::as_tuple(boost::asio::use_future)` for Asio 1.26 (Boost 1.81).
///
/// In that Asio version `as_tuple` cannot adapt `use_future`: the
/// combination fails to compile for every asynchronous operation, Asio's own
/// included (its `async_result` for `as_tuple_t` calls an `initiate` member
/// that `use_future`'s `async_result` does not have for tuple signatures).
/// Including this header adds the missing piece, so that
///
///     auto [ec, n] = img.async_read_at(0, buf, asio::as_tuple(asio::use_future)).get();
///
/// gives a `std::future<std::tuple<boost::system::error_code, std::size_t>>`
/// that never throws, as the Asio documentation describes. It applies to
/// any operation, not only this library's. On other Asio versions the header
/// does nothing and Asio's own behaviour applies.
#pragma once

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/associated_allocator.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/asio/version.hpp>
#include <tuple>
#include <type_traits>
#include <utility>

#if BOOST_ASIO_VERSION == 102600

namespace qed::detail {

/// Completion handler that packs an operation's arguments into one tuple
/// and passes it to the future's handler. It keeps that handler's
/// associated executor and allocator.
template <class Handler, class... Args>
struct tuple_packing_handler {
    Handler inner;

    using executor_type = boost::asio::associated_executor_t<Handler>;
    executor_type get_executor() const noexcept { return boost::asio::get_associated_executor(inner); }
    using allocator_type = boost::asio::associated_allocator_t<Handler>;
    allocator_type get_allocator() const noexcept { return boost::asio::get_associated_allocator(inner); }

    template <class... A>
    void operator()(A&&... a) {
        std::move(inner)(std::tuple<Args...>(std::forward<A>(a)...));
    }
};

}  // namespace qed::detail

namespace boost::asio {

/// `as_tuple(use_future)` for a single completion signature `R(Args...)`:
/// the future's value is `std::tuple<Args...>` (decayed).
template <typename Allocator, typename R, typename... Args>
class async_result<as_tuple_t<use_future_t<Allocator>>, R(Args...)> {
    using tuple_type = std::tuple<std::decay_t<Args>...>;
    using inner_result = async_result<use_future_t<Allocator>, void(tuple_type)>;

public:
    /// `std::future<std::tuple<Args...>>`.
    using return_type = typename inner_result::return_type;

    /// Starts the operation with a handler that packs its arguments.
    template <typename Initiation, typename RawToken, typename... InitArgs>
    static return_type initiate(Initiation&& initiation, RawToken&& token, InitArgs&&... args) {
        return async_initiate<use_future_t<Allocator>, void(tuple_type)>(
            [init = std::forward<Initiation>(initiation)](auto&& handler, auto&&... a) mutable {
                using inner_handler = std::decay_t<decltype(handler)>;
                std::move(init)(
                    qed::detail::tuple_packing_handler<inner_handler, std::decay_t<Args>...>{
                        std::forward<decltype(handler)>(handler)},
                    std::forward<decltype(a)>(a)...);
            },
            token.token_, std::forward<InitArgs>(args)...);
    }
};

}  // namespace boost::asio

#endif
