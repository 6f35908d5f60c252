// SPDX-License-Identifier: BSL-1.0
// A block file that records every operation it is asked to do (kind,
// offset, length, and for a write at offset 0 the header it carries), in
// the order the driver issues them, before passing it on unchanged. Tests
// read the log to check ordering rules: NEED_CHECK on disk before the first
// allocation, a flush between data and the L2 update, no I/O after close.
#pragma once

#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "qed/block_file.hpp"
#include "qed/format.hpp"

namespace qed::test {

struct io_record {
    enum kind { read, write, flush, resize } what;
    std::uint64_t offset = 0;  ///< resize: the new size
    std::uint64_t length = 0;
    std::optional<header> written_header;  ///< write covering bytes [0, 64)
    std::string file;                      ///< which file (the name it was opened by)
    std::vector<std::uint8_t> data;        ///< a write's bytes (when capturing)
};

using io_log = std::vector<io_record>;

/// Called with each record before the operation is passed on.
using io_hook = std::function<void(const io_record&)>;

class recording_file final : public block_file {
public:
    /// `capture`: keep a copy of every write's bytes in the log.
    recording_file(std::shared_ptr<block_file> inner, std::shared_ptr<io_log> log, std::string name, io_hook hook = {},
                   bool capture = false)
        : inner_(std::move(inner)),
          log_(std::move(log)),
          name_(std::move(name)),
          hook_(std::move(hook)),
          capture_(capture) {}

    executor_type get_executor() const override { return inner_->get_executor(); }

    void async_read_at(std::uint64_t off, std::span<const boost::asio::mutable_buffer> b, io_handler h) override {
        std::uint64_t n = 0;
        for (const auto& x : b) n += x.size();
        add({io_record::read, off, n, std::nullopt, name_, {}});
        inner_->async_read_at(off, b, std::move(h));
    }
    void async_write_at(std::uint64_t off, std::span<const boost::asio::const_buffer> b, io_handler h) override {
        std::uint64_t n = 0;
        for (const auto& x : b) n += x.size();
        io_record r{io_record::write, off, n, std::nullopt, name_, {}};
        if (capture_) {
            r.data.reserve(n);
            for (const auto& x : b) {
                const auto* p = static_cast<const std::uint8_t*>(x.data());
                r.data.insert(r.data.end(), p, p + x.size());
            }
        }
        if (off == 0 && n >= header_struct_size) {
            std::array<std::byte, header_struct_size> hb{};
            std::size_t got = 0;
            for (const auto& x : b) {
                const std::size_t k = std::min(x.size(), hb.size() - got);
                std::memcpy(hb.data() + got, x.data(), k);
                got += k;
                if (got == hb.size()) break;
            }
            r.written_header = decode(hb);
        }
        add(std::move(r));
        inner_->async_write_at(off, b, std::move(h));
    }
    void async_flush(op_handler h) override {
        add({io_record::flush, 0, 0, std::nullopt, name_, {}});
        inner_->async_flush(std::move(h));
    }
    void async_resize(std::uint64_t size, op_handler h) override {
        add({io_record::resize, size, 0, std::nullopt, name_, {}});
        inner_->async_resize(size, std::move(h));
    }
    std::uint64_t size(std::error_code& ec) const override { return inner_->size(ec); }
    std::size_t alignment() const noexcept override { return inner_->alignment(); }
    std::error_code allocation(std::uint64_t offset, std::uint64_t length, bool& data,
                               std::uint64_t& run) const override {
        return inner_->allocation(offset, length, data, run);
    }
    file_identity identity() const noexcept override { return inner_->identity(); }
    bool read_only() const noexcept override { return inner_->read_only(); }
    const char* backend_name() const noexcept override { return inner_->backend_name(); }

private:
    void add(io_record r) {
        if (hook_) hook_(r);
        log_->push_back(std::move(r));
    }

    std::shared_ptr<block_file> inner_;
    std::shared_ptr<io_log> log_;
    std::string name_;
    io_hook hook_;
    bool capture_;
};

}  // namespace qed::test
