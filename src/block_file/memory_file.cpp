// SPDX-License-Identifier: BSL-1.0
// The in-memory backend: a sparse page map. Operations complete through
// post(), so they behave like real asynchronous I/O (never inline).
#include <algorithm>
#include <atomic>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "block_file/posix_io.hpp"
#include "qed/block_file.hpp"

namespace qed {
namespace {
constexpr std::uint64_t page_size = 64 * 1024;
std::atomic<std::uint64_t> next_storage_id{1};
}  // namespace

struct memory_storage::impl {
    mutable std::mutex mutex;
    std::uint64_t size = 0;
    std::unordered_map<std::uint64_t, std::unique_ptr<std::byte[]>> pages;

    // Drop whole pages past `new_size` and zero the tail of a partial one,
    // so growing again reads zeros.
    void truncate(std::uint64_t new_size) {
        for (auto it = pages.begin(); it != pages.end();) {
            if (it->first * page_size >= new_size)
                it = pages.erase(it);
            else
                ++it;
        }
        const std::uint64_t in_page = new_size % page_size;
        if (in_page) {
            auto it = pages.find(new_size / page_size);
            if (it != pages.end()) std::memset(it->second.get() + in_page, 0, page_size - in_page);
        }
    }
};

memory_storage::memory_storage() : impl_(std::make_unique<impl>()), id_(next_storage_id++) {}
memory_storage::~memory_storage() = default;

std::uint64_t memory_storage::size() const noexcept {
    std::lock_guard lock(impl_->mutex);
    return impl_->size;
}

void memory_storage::resize(std::uint64_t size) {
    std::lock_guard lock(impl_->mutex);
    if (size < impl_->size) impl_->truncate(size);
    impl_->size = size;
}

void memory_storage::read(std::uint64_t offset, std::span<std::byte> out) const {
    std::lock_guard lock(impl_->mutex);
    std::size_t done = 0;
    while (done < out.size()) {
        const std::uint64_t pos = offset + done;
        const std::uint64_t page = pos / page_size;
        const std::size_t in_page = static_cast<std::size_t>(pos % page_size);
        const std::size_t n = std::min<std::size_t>(out.size() - done, page_size - in_page);
        auto it = impl_->pages.find(page);
        if (pos >= impl_->size || it == impl_->pages.end()) {
            std::memset(out.data() + done, 0, n);
        } else {
            const std::size_t valid = static_cast<std::size_t>(std::min<std::uint64_t>(n, impl_->size - pos));
            std::memcpy(out.data() + done, it->second.get() + in_page, valid);
            std::memset(out.data() + done + valid, 0, n - valid);
        }
        done += n;
    }
}

void memory_storage::write(std::uint64_t offset, std::span<const std::byte> in) {
    std::lock_guard lock(impl_->mutex);
    std::size_t done = 0;
    while (done < in.size()) {
        const std::uint64_t pos = offset + done;
        const std::uint64_t page = pos / page_size;
        const std::size_t in_page = static_cast<std::size_t>(pos % page_size);
        const std::size_t n = std::min<std::size_t>(in.size() - done, page_size - in_page);
        auto& p = impl_->pages[page];
        if (!p) {
            p = std::make_unique<std::byte[]>(page_size);
            std::memset(p.get(), 0, page_size);
        }
        std::memcpy(p.get() + in_page, in.data() + done, n);
        done += n;
    }
    impl_->size = std::max<std::uint64_t>(impl_->size, offset + in.size());
}

void memory_storage::punch(std::uint64_t offset, std::uint64_t length) {
    std::lock_guard lock(impl_->mutex);
    const std::uint64_t end = std::min(offset + length, impl_->size);
    for (std::uint64_t pos = offset; pos < end;) {
        const std::uint64_t page = pos / page_size;
        const std::uint64_t in_page = pos % page_size;
        const std::uint64_t n = std::min(end - pos, page_size - in_page);
        auto it = impl_->pages.find(page);
        if (it != impl_->pages.end()) {
            if (n == page_size)
                impl_->pages.erase(it);
            else
                std::memset(it->second.get() + in_page, 0, n);
        }
        pos += n;
    }
}

std::shared_ptr<memory_storage> memory_storage::clone() const {
    auto copy = std::make_shared<memory_storage>();
    std::lock_guard lock(impl_->mutex);
    copy->impl_->size = impl_->size;
    for (const auto& [k, v] : impl_->pages) {
        auto p = std::make_unique<std::byte[]>(page_size);
        std::memcpy(p.get(), v.get(), page_size);
        copy->impl_->pages.emplace(k, std::move(p));
    }
    return copy;
}

void memory_storage::allocation(std::uint64_t offset, std::uint64_t length, bool& data, std::uint64_t& run) const {
    std::lock_guard lock(impl_->mutex);
    auto present = [&](std::uint64_t pos) { return pos < impl_->size && impl_->pages.count(pos / page_size) != 0; };
    data = present(offset);
    run = 0;
    std::uint64_t pos = offset;
    while (run < length && present(pos) == data) {
        const std::uint64_t step = std::min(length - run, page_size - pos % page_size);
        run += step;
        pos += step;
        if (!data && pos >= impl_->size) {  // a hole to the end
            run = length;
            break;
        }
    }
}

std::uint64_t memory_storage::memory_used() const noexcept {
    std::lock_guard lock(impl_->mutex);
    return impl_->pages.size() * page_size;
}

namespace {

namespace asio = boost::asio;

// Ownership: shared by its openers; the bytes are a memory_storage shared
// by every handle opened on it.
class memory_file final : public block_file {
public:
    memory_file(asio::any_io_executor ex, std::shared_ptr<memory_storage> storage, bool read_only)
        : ex_(std::move(ex)), storage_(std::move(storage)), read_only_(read_only) {}

    executor_type get_executor() const override { return ex_; }

    void async_read_at(std::uint64_t offset, std::span<const asio::mutable_buffer> buffers,
                       io_handler handler) override {
        std::size_t done = 0;
        for (const auto& b : buffers) {
            storage_->read(offset + done, {static_cast<std::byte*>(b.data()), b.size()});
            done += b.size();
        }
        complete(std::move(handler), {}, done);
    }

    void async_write_at(std::uint64_t offset, std::span<const asio::const_buffer> buffers,
                        io_handler handler) override {
        if (read_only_) return complete(std::move(handler), detail::errno_code(EBADF), 0);
        std::size_t done = 0;
        for (const auto& b : buffers) {
            storage_->write(offset + done, {static_cast<const std::byte*>(b.data()), b.size()});
            done += b.size();
        }
        complete(std::move(handler), {}, done);
    }

    void async_flush(op_handler handler) override {
        asio::post(ex_, [h = std::move(handler)]() mutable { std::move(h)(std::error_code{}); });
    }

    void async_resize(std::uint64_t size, op_handler handler) override {
        std::error_code ec;
        if (read_only_)
            ec = detail::errno_code(EBADF);
        else
            storage_->resize(size);
        asio::post(ex_, [h = std::move(handler), ec]() mutable { std::move(h)(ec); });
    }

    void async_punch_hole(std::uint64_t offset, std::uint64_t length, op_handler handler) override {
        std::error_code ec;
        if (read_only_)
            ec = detail::errno_code(EBADF);
        else
            storage_->punch(offset, length);
        asio::post(ex_, [h = std::move(handler), ec]() mutable { std::move(h)(ec); });
    }

    std::uint64_t size(std::error_code& ec) const override {
        ec.clear();
        return storage_->size();
    }
    std::error_code allocation(std::uint64_t offset, std::uint64_t length, bool& data,
                               std::uint64_t& run) const override {
        storage_->allocation(offset, length, data, run);
        return {};
    }
    file_identity identity() const noexcept override { return {~std::uint64_t{0}, storage_->id()}; }
    bool read_only() const noexcept override { return read_only_; }
    const char* backend_name() const noexcept override { return "memory"; }

private:
    void complete(io_handler h, std::error_code ec, std::size_t n) {
        asio::post(ex_, [h = std::move(h), ec, n]() mutable { std::move(h)(ec, n); });
    }

    asio::any_io_executor ex_;
    std::shared_ptr<memory_storage> storage_;
    bool read_only_;
};

}  // namespace

std::shared_ptr<block_file> make_memory_file(const asio::any_io_executor& ex, std::shared_ptr<memory_storage> storage,
                                             bool read_only) {
    return std::make_shared<memory_file>(ex, std::move(storage), read_only);
}

}  // namespace qed
