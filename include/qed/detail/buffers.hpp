// SPDX-License-Identifier: BSL-1.0
// Scatter-gather lists as the non-template core sees them.
#pragma once

#include <boost/asio/buffer.hpp>
#include <boost/container/small_vector.hpp>
#include <cstddef>

namespace qed::detail {

using mutable_buffers = boost::container::small_vector<boost::asio::mutable_buffer, 4>;
using const_buffers = boost::container::small_vector<boost::asio::const_buffer, 4>;

template <class MutableBufferSequence>
mutable_buffers to_mutable_buffers(const MutableBufferSequence& seq) {
    mutable_buffers out;
    for (auto it = boost::asio::buffer_sequence_begin(seq); it != boost::asio::buffer_sequence_end(seq); ++it) {
        boost::asio::mutable_buffer b(*it);
        if (b.size()) out.push_back(b);
    }
    return out;
}

template <class ConstBufferSequence>
const_buffers to_const_buffers(const ConstBufferSequence& seq) {
    const_buffers out;
    for (auto it = boost::asio::buffer_sequence_begin(seq); it != boost::asio::buffer_sequence_end(seq); ++it) {
        boost::asio::const_buffer b(*it);
        if (b.size()) out.push_back(b);
    }
    return out;
}

template <class Buffers>
std::size_t total_size(const Buffers& bufs) noexcept {
    std::size_t n = 0;
    for (const auto& b : bufs) n += b.size();
    return n;
}

/// The sub-list covering bytes [offset, offset + length) of `bufs`.
template <class Buffers>
Buffers slice(const Buffers& bufs, std::size_t offset, std::size_t length) {
    Buffers out;
    for (const auto& b : bufs) {
        if (length == 0) break;
        if (offset >= b.size()) {
            offset -= b.size();
            continue;
        }
        auto piece = b + offset;
        offset = 0;
        const std::size_t n = piece.size() < length ? piece.size() : length;
        out.emplace_back(piece.data(), n);
        length -= n;
    }
    return out;
}

}  // namespace qed::detail
