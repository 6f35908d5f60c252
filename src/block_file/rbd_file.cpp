// SPDX-License-Identifier: BSL-1.0
// The Ceph RBD backend. Reads, writes and flushes are librbd's own
// asynchronous calls (rbd_aio_readv / rbd_aio_writev / rbd_aio_flush /
// rbd_aio_write_zeroes); librbd completes them on its own threads, and the
// completion is handed to the file's executor (tracked meanwhile, so its
// io_context doesn't run out of work) -- a handler never runs on a librbd
// thread nor inside the initiating call.
//
// An RBD image has a size like a file, but a write past it fails instead of
// extending it. So a write that reaches past the end first grows the image
// (rbd_resize, a blocking call, on the shared pool; one at a time, never
// shrinking under a concurrent grow), as a local file grows under pwrite.
// resize is rbd_resize, size is rbd_get_size. Reads past the end give zeros.
#include "block_file/rbd_file.hpp"

#include <rados/librados.h>
#include <rbd/librbd.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <cstring>
#include <functional>
#include <mutex>
#include <vector>

#include "block_file/blocking_pool.hpp"
#include "block_file/posix_io.hpp"
#include "qed/error.hpp"

namespace qed::detail {

bool is_rbd_name(std::string_view name) noexcept {
    return name.starts_with("rbd:");
}

namespace {

namespace asio = boost::asio;

struct rbd_name {
    std::string pool, ns, image, snapshot, id, conf;
    std::vector<std::pair<std::string, std::string>> options;
};

// Split on unescaped `sep`, removing the escapes of `sep` and '@'.
std::vector<std::string> split_escaped(std::string_view s, char sep) {
    std::vector<std::string> out(1);
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 1 < s.size()) {
            out.back() += s[++i];
        } else if (s[i] == sep) {
            out.emplace_back();
        } else {
            out.back() += s[i];
        }
    }
    return out;
}

bool parse_rbd_name(std::string_view full, rbd_name& n, std::string& why) {
    std::string_view rest = full.substr(4);
    // The image part ends at the first unescaped ':'.
    std::size_t end = 0;
    while (end < rest.size() && rest[end] != ':') end += rest[end] == '\\' ? 2 : 1;
    end = std::min(end, rest.size());
    std::string_view spec = rest.substr(0, end);
    // @snapshot (unescaped)
    std::size_t at = std::string_view::npos;
    for (std::size_t i = 0; i < spec.size(); ++i) {
        if (spec[i] == '\\')
            ++i;
        else if (spec[i] == '@') {
            at = i;
            break;
        }
    }
    auto unescape = [](std::string_view s) { return split_escaped(s, '\0').front(); };
    if (at != std::string_view::npos) {
        n.snapshot = unescape(spec.substr(at + 1));
        spec = spec.substr(0, at);
    }
    const auto parts = split_escaped(spec, '/');
    if (parts.size() == 2) {
        n.pool = parts[0];
        n.image = parts[1];
    } else if (parts.size() == 3) {
        n.pool = parts[0];
        n.ns = parts[1];
        n.image = parts[2];
    } else {
        why = "expected rbd:POOL/IMAGE[@SNAPSHOT][:KEY=VALUE...]";
        return false;
    }
    if (n.pool.empty() || n.image.empty()) {
        why = "empty pool or image name";
        return false;
    }
    if (end < rest.size()) {
        for (const auto& kv : split_escaped(rest.substr(end + 1), ':')) {
            const auto eq = kv.find('=');
            if (eq == std::string::npos || eq == 0) {
                why = "option '" + kv + "' is not KEY=VALUE";
                return false;
            }
            const std::string key = kv.substr(0, eq), value = kv.substr(eq + 1);
            if (key == "id")
                n.id = value;
            else if (key == "conf")
                n.conf = value;
            else
                n.options.emplace_back(key, value);
        }
    }
    return true;
}

std::error_code rbd_code(int r) {
    return errno_code(r < 0 ? -r : (r ? r : EIO));
}

/// The cluster connection, pool context and image; closed in that order's reverse.
struct rbd_handles {
    rados_t cluster = nullptr;
    rados_ioctx_t io = nullptr;
    rbd_image_t image = nullptr;
    ~rbd_handles() {
        if (image) ::rbd_close(image);
        if (io) ::rados_ioctx_destroy(io);
        if (cluster) ::rados_shutdown(cluster);
    }
};

class rbd_file;

/// One operation in flight: librbd's completion and what the handler needs.
/// Ownership: created per request, deleted when its completion is handed over.
struct rbd_op {
    std::shared_ptr<rbd_file> file;
    asio::any_io_executor tracked;  // keeps the io_context busy until the handler is queued
    io_handler ioh;
    op_handler oph;
    std::vector<::iovec> iov;
    std::size_t bytes = 0;
    std::uint64_t offset = 0;
};

class rbd_file final : public block_file, public std::enable_shared_from_this<rbd_file> {
public:
    rbd_file(asio::any_io_executor ex, std::unique_ptr<rbd_handles> h, std::string name, bool read_only)
        : ex_(std::move(ex)), h_(std::move(h)), name_(std::move(name)), read_only_(read_only), pool_(blocking_pool()) {
        identity_ = {0x524244ull << 40, std::hash<std::string>{}(name_)};
    }

    executor_type get_executor() const override { return ex_; }

    void async_read_at(std::uint64_t offset, std::span<const asio::mutable_buffer> buffers,
                       io_handler handler) override {
        auto* op = make_op(offset);
        op->ioh.swap(handler);
        // librbd reads only up to the image's size: past it, zeros.
        std::uint64_t size = 0;
        ::rbd_get_size(h_->image, &size);
        std::uint64_t pos = offset;
        for (const auto& b : buffers) {
            auto* p = static_cast<std::byte*>(b.data());
            const std::size_t in =
                pos >= size ? 0 : static_cast<std::size_t>(std::min<std::uint64_t>(b.size(), size - pos));
            if (in) op->iov.push_back({p, in});
            std::memset(p + in, 0, b.size() - in);
            pos += b.size();
            op->bytes += b.size();
        }
        if (op->iov.empty()) return finish(op, 0);
        start_aio(op, [](rbd_op* o, rbd_completion_t c) {
            return ::rbd_aio_readv(o->file->h_->image, o->iov.data(), static_cast<int>(o->iov.size()), o->offset, c);
        });
    }

    void async_write_at(std::uint64_t offset, std::span<const asio::const_buffer> buffers,
                        io_handler handler) override {
        auto* op = make_op(offset);
        op->ioh.swap(handler);
        for (const auto& b : buffers) {
            if (b.size()) op->iov.push_back({const_cast<void*>(b.data()), b.size()});
            op->bytes += b.size();
        }
        if (read_only_) return finish(op, -EBADF);
        if (op->iov.empty()) return finish(op, 0);
        auto write = [](rbd_op* o, rbd_completion_t c) {
            return ::rbd_aio_writev(o->file->h_->image, o->iov.data(), static_cast<int>(o->iov.size()), o->offset, c);
        };
        std::uint64_t size = 0;
        ::rbd_get_size(h_->image, &size);
        if (offset + op->bytes <= size) return start_aio(op, write);
        // Past the end: grow first (blocking), then write.
        asio::post(*pool_, [op, write] {
            const int r = op->file->grow_to(op->offset + op->bytes);
            if (r < 0) return finish(op, r);
            op->file->start_aio(op, write);
        });
    }

    void async_flush(op_handler handler) override {
        auto* op = make_op(0);
        op->oph.swap(handler);
        start_aio(op, [](rbd_op* o, rbd_completion_t c) { return ::rbd_aio_flush(o->file->h_->image, c); });
    }

    void async_resize(std::uint64_t size, op_handler handler) override {
        auto* op = make_op(size);
        op->oph.swap(handler);
        if (read_only_) return finish(op, -EBADF);
        asio::post(*pool_, [op] {
            std::lock_guard lock(op->file->grow_mutex_);
            finish(op, ::rbd_resize(op->file->h_->image, op->offset));
        });
    }

    void async_punch_hole(std::uint64_t offset, std::uint64_t length, op_handler handler) override {
        if (read_only_) return block_file::async_punch_hole(offset, length, std::move(handler));
        auto* op = make_op(offset);
        op->oph.swap(handler);
        std::uint64_t size = 0;
        ::rbd_get_size(h_->image, &size);
        op->bytes = static_cast<std::size_t>(offset >= size ? 0 : std::min(length, size - offset));
        if (op->bytes == 0) return finish(op, 0);
        // Write-zeroes: the range reads as zeros afterwards, and librbd
        // deallocates whole objects inside it.
        start_aio(op, [](rbd_op* o, rbd_completion_t c) {
            return ::rbd_aio_write_zeroes(o->file->h_->image, o->offset, o->bytes, c, 0, 0);
        });
    }

    std::uint64_t size(std::error_code& ec) const override {
        std::uint64_t size = 0;
        const int r = ::rbd_get_size(h_->image, &size);
        ec = r < 0 ? rbd_code(r) : std::error_code{};
        return size;
    }
    file_identity identity() const noexcept override { return identity_; }
    bool read_only() const noexcept override { return read_only_; }
    const char* backend_name() const noexcept override { return "rbd"; }

private:
    rbd_op* make_op(std::uint64_t offset) {
        auto* op = new rbd_op;
        op->file = shared_from_this();
        op->tracked = asio::prefer(ex_, asio::execution::outstanding_work.tracked);
        op->offset = offset;
        return op;
    }

    int grow_to(std::uint64_t end) {
        std::lock_guard lock(grow_mutex_);
        std::uint64_t size = 0;
        int r = ::rbd_get_size(h_->image, &size);
        if (r < 0) return r;
        return size >= end ? 0 : ::rbd_resize(h_->image, end);
    }

    template <class Start>
    void start_aio(rbd_op* op, Start start) {
        rbd_completion_t c = nullptr;
        int r = ::rbd_aio_create_completion(op, &rbd_file::on_complete, &c);
        if (r < 0) return finish(op, r);
        r = start(op, c);
        if (r < 0) {
            ::rbd_aio_release(c);
            finish(op, r);
        }
    }

    // On a librbd thread.
    static void on_complete(rbd_completion_t c, void* arg) {
        auto* op = static_cast<rbd_op*>(arg);
        const ssize_t r = ::rbd_aio_get_return_value(c);
        ::rbd_aio_release(c);
        finish(op, r < 0 ? static_cast<int>(r) : 0);
    }

    // From any thread: the handler runs on the file's executor, later.
    static void finish(rbd_op* op, int r) {
        const std::error_code ec = r < 0 ? rbd_code(r) : std::error_code{};
        auto tracked = std::move(op->tracked);
        const auto target = asio::prefer(tracked, asio::execution::outstanding_work.untracked,
                                         asio::execution::relationship.fork, asio::execution::blocking.never);
        hand_over(target, std::move(tracked), [op, ec]() mutable {
            std::unique_ptr<rbd_op> own(op);  // the file is let go here, on the executor
            if (own->ioh)
                std::move(own->ioh)(ec, ec ? std::size_t{0} : own->bytes);
            else
                std::move(own->oph)(ec);
        });
    }

    asio::any_io_executor ex_;
    std::unique_ptr<rbd_handles> h_;
    std::string name_;
    bool read_only_;
    std::shared_ptr<asio::thread_pool> pool_;
    std::mutex grow_mutex_;
    file_identity identity_;
};

}  // namespace

std::shared_ptr<block_file> open_rbd_file(const asio::any_io_executor& ex, const std::string& name,
                                          const file_options& options, std::error_code& ec) {
    ec.clear();
    auto fail = [&](std::error_code e, const std::string& why) -> std::shared_ptr<block_file> {
        ec = e;
        if (options.log) options.log(name + ": " + why);
        return nullptr;
    };
    rbd_name n;
    std::string why;
    if (!parse_rbd_name(name, n, why)) return fail(errno_code(EINVAL), why);
    if (!n.snapshot.empty() && !options.read_only) return fail(errno_code(EROFS), "a snapshot is read-only");
    auto h = std::make_unique<rbd_handles>();
    int r = ::rados_create(&h->cluster, n.id.empty() ? nullptr : n.id.c_str());
    if (r < 0) return fail(rbd_code(r), "cannot create a cluster handle: " + rbd_code(r).message());
    r = ::rados_conf_read_file(h->cluster, n.conf.empty() ? nullptr : n.conf.c_str());
    if (r < 0 && !n.conf.empty()) return fail(rbd_code(r), "cannot read " + n.conf + ": " + rbd_code(r).message());
    ::rados_conf_parse_env(h->cluster, nullptr);
    // librbd's cache follows the cache mode, as QEMU's rbd driver sets it:
    // on for writeback (a flush writes it out, as a disk's cache), off for
    // O_DIRECT (cache=none). An rbd_cache=... in the name still wins.
    if ((r = ::rados_conf_set(h->cluster, "rbd_cache", options.direct ? "false" : "true")) < 0)
        return fail(rbd_code(r), "cannot set rbd_cache: " + rbd_code(r).message());
    for (const auto& [k, v] : n.options) {
        if ((r = ::rados_conf_set(h->cluster, k.c_str(), v.c_str())) < 0)
            return fail(rbd_code(r), "bad option " + k + "=" + v + ": " + rbd_code(r).message());
    }
    if ((r = ::rados_connect(h->cluster)) < 0)
        return fail(rbd_code(r), "cannot connect to the cluster: " + rbd_code(r).message());
    if ((r = ::rados_ioctx_create(h->cluster, n.pool.c_str(), &h->io)) < 0)
        return fail(rbd_code(r), "cannot open pool " + n.pool + ": " + rbd_code(r).message());
    if (!n.ns.empty()) ::rados_ioctx_set_namespace(h->io, n.ns.c_str());
    if (options.create && !options.read_only) {
        int order = 0;
        r = ::rbd_create(h->io, n.image.c_str(), 0, &order);
        if (r < 0 && r != -EEXIST) return fail(rbd_code(r), "cannot create the image: " + rbd_code(r).message());
    }
    if (options.read_only)
        r = ::rbd_open_read_only(h->io, n.image.c_str(), &h->image, n.snapshot.empty() ? nullptr : n.snapshot.c_str());
    else
        r = ::rbd_open(h->io, n.image.c_str(), &h->image, nullptr);
    if (r < 0) return fail(rbd_code(r), "cannot open the image: " + rbd_code(r).message());
    // Creating over an existing image starts it again from nothing, as
    // O_TRUNC does a file.
    if (options.create && !options.read_only && (r = ::rbd_resize(h->image, 0)) < 0)
        return fail(rbd_code(r), "cannot truncate the image: " + rbd_code(r).message());
    return std::make_shared<rbd_file>(ex, std::move(h), name, options.read_only);
}

}  // namespace qed::detail
