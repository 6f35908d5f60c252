// SPDX-License-Identifier: BSL-1.0
// Template glue of the image API: each initiating function packs its
// arguments and forwards, through boost::asio::any_completion_handler, to a
// non-template entry point compiled once in the library.
#pragma once

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <utility>

namespace qed {
namespace detail {

using open_handler = boost::asio::any_completion_handler<void(boost::system::error_code, image)>;
using status_handler = boost::asio::any_completion_handler<void(boost::system::error_code, std::vector<extent>)>;
using check_handler = boost::asio::any_completion_handler<void(boost::system::error_code, check_result)>;

void initiate_create(const boost::asio::any_io_executor& ex, std::string path, create_options options,
                     op_handler handler);
void initiate_open(const boost::asio::any_io_executor& ex, std::string path, open_options options,
                   open_handler handler);
void initiate_open_file(std::shared_ptr<block_file> file, std::string name, open_options options, open_handler handler);
void initiate_read(const std::shared_ptr<device>& dev, std::uint64_t offset, mutable_buffers buffers,
                   io_handler handler);
void initiate_write(const std::shared_ptr<device>& dev, std::uint64_t offset, const_buffers buffers,
                    write_options options, io_handler handler);
void initiate_write_zeroes(const std::shared_ptr<device>& dev, std::uint64_t offset, std::uint64_t length,
                           zero_options options, op_handler handler);
void initiate_discard(const std::shared_ptr<device>& dev, std::uint64_t offset, std::uint64_t length,
                      op_handler handler);
void initiate_flush(const std::shared_ptr<device>& dev, op_handler handler);
void initiate_block_status(const std::shared_ptr<device>& dev, std::uint64_t offset, std::uint64_t length,
                           status_handler handler);
void initiate_check(const std::shared_ptr<device>& dev, check_options options, check_handler handler);
void initiate_change_backing_file(const std::shared_ptr<device>& dev, std::string name,
                                  std::optional<image_format> format, op_handler handler);
void initiate_grow(const std::shared_ptr<device>& dev, std::uint64_t new_size, op_handler handler);
void initiate_make_empty(const std::shared_ptr<device>& dev, op_handler handler);
void initiate_close(const std::shared_ptr<device>& dev, op_handler handler);

}  // namespace detail

template <class Token>
auto image::async_create(const executor_type& ex, std::string path, create_options options, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
        [](auto handler, const executor_type& a_ex, std::string a_path, create_options a_options) {
            detail::initiate_create(a_ex, std::move(a_path), std::move(a_options), std::move(handler));
        },
        token, ex, std::move(path), std::move(options));
}

template <class Token>
auto image::async_open(const executor_type& ex, std::string path, open_options options, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code, image)>(
        [](auto handler, const executor_type& a_ex, std::string a_path, open_options a_options) {
            detail::initiate_open(a_ex, std::move(a_path), std::move(a_options), std::move(handler));
        },
        token, ex, std::move(path), std::move(options));
}

template <class Token>
auto image::async_open(std::shared_ptr<block_file> file, std::string name, open_options options, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code, image)>(
        [](auto handler, std::shared_ptr<block_file> a_file, std::string a_name, open_options a_options) {
            detail::initiate_open_file(std::move(a_file), std::move(a_name), std::move(a_options), std::move(handler));
        },
        token, std::move(file), std::move(name), std::move(options));
}

template <class MutableBufferSequence, class Token>
auto image::async_read_at(std::uint64_t offset, const MutableBufferSequence& buffers, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code, std::size_t)>(
        [](auto handler, const std::shared_ptr<detail::device>& a_dev_, std::uint64_t a_offset,
           detail::mutable_buffers a_bufs) {
            detail::initiate_read(a_dev_, a_offset, std::move(a_bufs), std::move(handler));
        },
        token, dev_, offset, detail::to_mutable_buffers(buffers));
}

template <class ConstBufferSequence, class Token>
auto image::async_write_at(std::uint64_t offset, const ConstBufferSequence& buffers, Token&& token) {
    return async_write_at(offset, buffers, write_options{}, std::forward<Token>(token));
}

template <class ConstBufferSequence, class Token>
auto image::async_write_at(std::uint64_t offset, const ConstBufferSequence& buffers, write_options options,
                           Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code, std::size_t)>(
        [](auto handler, const std::shared_ptr<detail::device>& a_dev_, std::uint64_t a_offset,
           detail::const_buffers a_bufs, write_options a_options) {
            detail::initiate_write(a_dev_, a_offset, std::move(a_bufs), a_options, std::move(handler));
        },
        token, dev_, offset, detail::to_const_buffers(buffers), options);
}

template <class Token>
auto image::async_write_zeroes(std::uint64_t offset, std::uint64_t length, zero_options options, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
        [](auto handler, const std::shared_ptr<detail::device>& a_dev_, std::uint64_t a_offset, std::uint64_t a_length,
           zero_options a_options) {
            detail::initiate_write_zeroes(a_dev_, a_offset, a_length, a_options, std::move(handler));
        },
        token, dev_, offset, length, options);
}

template <class Token>
auto image::async_discard(std::uint64_t offset, std::uint64_t length, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
        [](auto handler, const std::shared_ptr<detail::device>& a_dev_, std::uint64_t a_offset,
           std::uint64_t a_length) { detail::initiate_discard(a_dev_, a_offset, a_length, std::move(handler)); },
        token, dev_, offset, length);
}

template <class Token>
auto image::async_flush(Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
        [](auto handler, const std::shared_ptr<detail::device>& a_dev_) {
            detail::initiate_flush(a_dev_, std::move(handler));
        },
        token, dev_);
}

template <class Token>
auto image::async_block_status(std::uint64_t offset, std::uint64_t length, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code, std::vector<extent>)>(
        [](auto handler, const std::shared_ptr<detail::device>& a_dev_, std::uint64_t a_offset,
           std::uint64_t a_length) { detail::initiate_block_status(a_dev_, a_offset, a_length, std::move(handler)); },
        token, dev_, offset, length);
}

template <class Token>
auto image::async_check(check_options options, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code, check_result)>(
        [](auto handler, const std::shared_ptr<detail::device>& a_dev_, check_options a_options) {
            detail::initiate_check(a_dev_, a_options, std::move(handler));
        },
        token, dev_, options);
}

template <class Token>
auto image::async_change_backing_file(std::string name, std::optional<image_format> format, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
        [](auto handler, const std::shared_ptr<detail::device>& a_dev_, std::string a_name,
           std::optional<image_format> a_format) {
            detail::initiate_change_backing_file(a_dev_, std::move(a_name), a_format, std::move(handler));
        },
        token, dev_, std::move(name), format);
}

template <class Token>
auto image::async_grow(std::uint64_t new_size, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
        [](auto handler, const std::shared_ptr<detail::device>& a_dev_, std::uint64_t a_size) {
            detail::initiate_grow(a_dev_, a_size, std::move(handler));
        },
        token, dev_, new_size);
}

template <class Token>
auto image::async_make_empty(Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
        [](auto handler, const std::shared_ptr<detail::device>& a_dev_) {
            detail::initiate_make_empty(a_dev_, std::move(handler));
        },
        token, dev_);
}

template <class Token>
auto image::async_close(Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
        [](auto handler, const std::shared_ptr<detail::device>& a_dev_) {
            detail::initiate_close(a_dev_, std::move(handler));
        },
        token, dev_);
}

}  // namespace qed
