// SPDX-License-Identifier: BSL-1.0
#include "image/node_open.hpp"

#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/post.hpp>
#include <cctype>
#include <cstring>
#include <functional>
#include <map>
#include <qed/blkdebug.hpp>
#include <qed/throttle.hpp>
#include <vector>

#include "block_file/blocking_pool.hpp"
#include "block_file/quorum_file.hpp"
#include "block_file/ssh_file.hpp"
#include "image/file_protocol.hpp"
#include "table/co_io.hpp"

namespace qed::detail {
namespace {

bool is_protocol(std::string_view d) {
    return d == "file" || d == "host_device" || d == "host_cdrom";
}

bool has_prefix(const node_options& o, std::string_view prefix) {
    const std::string p = std::string(prefix) + ".";
    auto it = o.lower_bound(p);
    return it != o.end() && it->first.compare(0, p.size(), p) == 0;
}

std::string get(const node_options& o, const std::string& key) {
    auto it = o.find(key);
    return it == o.end() ? std::string{} : it->second;
}

/// A size option as QEMU writes one: bytes, or a number with k, M, G, T, P
/// or E (powers of 1024). nullopt when malformed or past 2^64.
std::optional<std::uint64_t> size_option(const std::string& v, std::string& why) {
    std::size_t used = 0;
    std::uint64_t n = 0;
    while (used < v.size() && v[used] >= '0' && v[used] <= '9') {
        if (n > (~std::uint64_t{0} - 9) / 10) {
            why = "too large";
            return std::nullopt;
        }
        n = n * 10 + static_cast<unsigned>(v[used++] - '0');
    }
    if (used == 0) {
        why = "not a number: '" + v + "'";
        return std::nullopt;
    }
    if (used == v.size() || (used + 1 == v.size() && (v[used] == 'b' || v[used] == 'B'))) return n;
    static constexpr std::string_view units = "KMGTPE";
    const auto u = units.find(static_cast<char>(std::toupper(static_cast<unsigned char>(v[used]))));
    if (used + 1 != v.size() || u == std::string_view::npos) {
        why = "unknown unit in '" + v + "'";
        return std::nullopt;
    }
    const unsigned shift = 10 * static_cast<unsigned>(u + 1);
    if (n > (~std::uint64_t{0} >> shift)) {
        why = "too large";
        return std::nullopt;
    }
    return n << shift;
}

void log_line(const open_options& open, const std::string& line) {
    if (open.log) open.log(line);
}

// ---- an image as the file of another format --------------------------------

/// The block file a nested format reads through: an open image. Transfers
/// must keep to its 512-byte sectors for writes (what alignment() says, and
/// what the formats above write); misaligned reads go through a bounce
/// buffer. Writes past the end grow the image first; reads past it give zeros.
class image_file final : public block_file {
public:
    explicit image_file(std::shared_ptr<device> dev) : dev_(std::move(dev)), read_only_(dev_->info().read_only) {}

    executor_type get_executor() const override { return dev_->get_executor(); }

    void async_read_at(std::uint64_t offset, std::span<const boost::asio::mutable_buffer> buffers,
                       io_handler handler) override {
        mutable_buffers bufs(buffers.begin(), buffers.end());
        const std::uint64_t n = total_size(bufs);
        const std::uint64_t a0 = offset / sector_size * sector_size;
        const std::uint64_t a1 = (offset + n + sector_size - 1) / sector_size * sector_size;
        const std::uint64_t size = dev_->size();
        const std::uint64_t end = std::min(a1, std::max(size, a0));
        // The bytes from the device: [a0, end), through a bounce buffer
        // unless the request is aligned and inside the image.
        if (a0 == offset && a1 == offset + n && end == a1) {
            dev_->read(offset, std::move(bufs), std::move(handler));
            return;
        }
        auto bounce = std::make_shared<std::vector<std::byte>>(static_cast<std::size_t>(a1 - a0));
        auto finish = [bounce, bufs, skip = static_cast<std::size_t>(offset - a0), n, h = std::move(handler)](
                          std::error_code ec, std::size_t) mutable {
            if (ec) return std::move(h)(ec, std::size_t{0});
            std::size_t at = skip;
            for (const auto& b : bufs) {
                std::memcpy(b.data(), bounce->data() + at, b.size());
                at += b.size();
            }
            std::move(h)(std::error_code{}, static_cast<std::size_t>(n));
        };
        if (end <= a0) {  // all past the end: zeros
            boost::asio::post(get_executor(), [f = std::move(finish)]() mutable { f(std::error_code{}, 0); });
            return;
        }
        mutable_buffers inner{boost::asio::mutable_buffer(bounce->data(), static_cast<std::size_t>(end - a0))};
        dev_->read(a0, std::move(inner), std::move(finish));
    }

    void async_write_at(std::uint64_t offset, std::span<const boost::asio::const_buffer> buffers,
                        io_handler handler) override {
        const_buffers bufs(buffers.begin(), buffers.end());
        const std::uint64_t n = total_size(bufs);
        if (offset % sector_size || n % sector_size) {
            boost::asio::post(get_executor(), [h = std::move(handler)]() mutable {
                std::move(h)(make_error_code(errc::invalid_argument), std::size_t{0});
            });
            return;
        }
        const std::uint64_t need = offset + n;
        if (need <= dev_->size()) {
            dev_->write(offset, std::move(bufs), write_options{}, std::move(handler));
            return;
        }
        // Grow first. Two writes may both grow; the smaller target then
        // finds the image already large enough (and its refusal is moot).
        dev_->grow(need, [dev = dev_, offset, need, bufs = std::move(bufs),
                          h = std::move(handler)](std::error_code ec) mutable {
            if (ec && dev->size() < need) return std::move(h)(ec, std::size_t{0});
            dev->write(offset, std::move(bufs), write_options{}, std::move(h));
        });
    }

    void async_flush(op_handler handler) override { dev_->flush(std::move(handler)); }

    void async_resize(std::uint64_t size, op_handler handler) override {
        if (size <= dev_->size()) {
            // Images only grow; a smaller size keeps the bytes beyond it,
            // which the format above no longer uses.
            boost::asio::post(get_executor(), [h = std::move(handler)]() mutable { std::move(h)(std::error_code{}); });
            return;
        }
        dev_->grow((size + sector_size - 1) / sector_size * sector_size, std::move(handler));
    }

    void async_punch_hole(std::uint64_t offset, std::uint64_t length, op_handler handler) override {
        if (offset % sector_size || length % sector_size || offset + length > dev_->size())
            return block_file::async_punch_hole(offset, length, std::move(handler));
        dev_->write_zeroes(offset, length, zero_options{}, std::move(handler));
    }

    void async_close(op_handler handler) override {
        if (!dev_->is_open())
            return boost::asio::post(get_executor(),
                                     [h = std::move(handler)]() mutable { std::move(h)(std::error_code{}); });
        dev_->close(std::move(handler));
    }

    // The image's own block status (of its whole chain): allocated data is
    // data; zero clusters and unallocated ranges read as zeros. Past the
    // end: zeros. Misaligned ranges (never asked by the formats here) are
    // data, as the default says.
    void async_block_status(std::uint64_t offset, std::uint64_t length, file_status_handler handler) override {
        const std::uint64_t size = dev_->size();
        if (offset >= size) {
            std::vector<file_extent> runs{{std::max<std::uint64_t>(length, 1), false, true}};
            return boost::asio::post(get_executor(), [h = std::move(handler), runs = std::move(runs)]() mutable {
                std::move(h)(boost::system::error_code{}, std::move(runs));
            });
        }
        const std::uint64_t n = std::min(length, size - offset);
        if (offset % sector_size || n % sector_size)
            return block_file::async_block_status(offset, length, std::move(handler));
        dev_->block_status(offset, n, 0,
                           [h = std::move(handler)](boost::system::error_code ec, std::vector<extent> extents) mutable {
                               std::vector<file_extent> runs;
                               if (!ec)
                                   for (const auto& e : extents)
                                       runs.push_back({e.length, e.data, e.zero || !e.present});
                               std::move(h)(ec, std::move(runs));
                           });
    }

    std::uint64_t size(std::error_code& ec) const override {
        ec.clear();
        return dev_->size();
    }
    std::size_t alignment() const noexcept override { return sector_size; }
    file_identity identity() const noexcept override { return id_; }
    bool read_only() const noexcept override { return read_only_; }
    const char* backend_name() const noexcept override { return "image"; }

private:
    static file_identity next_identity() {
        static std::atomic<std::uint64_t> n{0};
        return {~std::uint64_t{1}, ++n};
    }
    std::shared_ptr<device> dev_;
    bool read_only_;
    file_identity id_ = next_identity();
};

// ---- drivers of a node's file ----------------------------------------------

using file_result = std::pair<std::error_code, std::shared_ptr<block_file>>;

/// What a driver of a node's file gets: that node's options (the "file."
/// prefix taken off), the caller's open options and the chain so far.
struct child_request {
    boost::asio::any_io_executor ex;
    node_options options;
    open_options open;
    unsigned depth = 0;
    std::vector<file_identity> chain;
    std::string node;  ///< the name of the image being opened, which refusals start with
};

/// A driver: turns a child_request into a block file, or logs one line and fails.
using child_driver = boost::asio::awaitable<file_result> (*)(child_request);

/// One line, "NODE: why" (QEMU: "can't open device NODE: why"), and failure.
file_result refuse(const child_request& r, const std::string& line, std::error_code ec) {
    log_line(r.open, r.node.empty() ? line : r.node + ": " + line);
    return {ec, nullptr};
}

/// Options a driver does not know fail in QEMU's words.
bool only_keys(const child_request& r, std::string_view driver, std::initializer_list<std::string_view> keys,
               std::string& bad) {
    for (const auto& [k, v] : r.options) {
        if (std::find(keys.begin(), keys.end(), k) != keys.end()) continue;
        bad = "Block protocol '" + std::string(driver) + "' doesn't support the option '" + k + "'";
        return false;
    }
    return true;
}

boost::asio::awaitable<file_result> open_path(child_request r, std::string path, bool character_device,
                                              std::function<void(file_options&)> adjust = {}) {
    file_options fo;
    fo.read_only = r.open.read_only;
    fo.direct = r.open.direct;
    fo.backend = r.open.backend;
    fo.locking = r.open.locking;
    fo.force_share = r.open.force_share;
    fo.character_device = character_device;
    auto logged = std::make_shared<bool>(false);
    fo.log = [logged, log = r.open.log](std::string_view line) {
        *logged = true;
        if (log) log(line);
    };
    const std::string lock = get(r.options, "locking");
    if (lock == "on" || lock == "off") fo.locking = lock == "on" ? lock_mode::on : lock_mode::off;
    fo.notice = r.open.notice;
    if (adjust) adjust(fo);
    auto opener = r.open.opener ? r.open.opener : default_opener(r.ex);
    auto opening = open_through(r.ex, std::move(opener), path, fo);  // named: GCC 12 and coroutines
    auto [ec, f] = co_await std::move(opening);
    if (!f) {
        if (!ec) ec = std::make_error_code(std::errc::io_error);
        if (!*logged) co_return refuse(r, "Could not open '" + path + "': " + ec.message(), ec);
        co_return file_result{ec, nullptr};
    }
    co_return file_result{{}, std::move(f)};
}

boost::asio::awaitable<file_result> protocol_driver(child_request r, std::string driver) {
    std::string bad;
    if (!only_keys(r, driver, {"driver", "filename", "locking"}, bad)) co_return refuse(r, bad, errc::invalid_argument);
    const std::string lock = get(r.options, "locking");
    if (!lock.empty() && lock != "on" && lock != "off" && lock != "auto")
        co_return refuse(r, "Parameter 'locking' does not accept value '" + lock + "'", errc::invalid_argument);
    const std::string path = get(r.options, "filename");
    if (path.empty())
        co_return refuse(r, "The '" + driver + "' block driver requires a file name", errc::invalid_argument);
    auto opening = open_path(std::move(r), path, driver != "file");
    co_return co_await std::move(opening);
}

boost::asio::awaitable<file_result> file_driver(child_request r) {
    co_return co_await protocol_driver(std::move(r), "file");
}
boost::asio::awaitable<file_result> host_device_driver(child_request r) {
    co_return co_await protocol_driver(std::move(r), "host_device");
}
boost::asio::awaitable<file_result> host_cdrom_driver(child_request r) {
    co_return co_await protocol_driver(std::move(r), "host_cdrom");
}

/// Where an nbd node's server is: server.type=unix with server.path, or
/// server.type=inet with server.host and server.port (10809 by default),
/// or QEMU's legacy path / host / port; and the export.
struct nbd_address {
    std::string type, path, host, port, exp;
};

bool nbd_address_of(const node_options& o, nbd_address& a, std::string& why) {
    const bool legacy = o.count("path") || o.count("host") || o.count("port");
    a.exp = get(o, "export");
    if (legacy) {
        if (has_prefix(o, "server")) {
            why = "Cannot use 'server' and path/host/port at the same time";
            return false;
        }
        if (o.count("path") && o.count("host")) {
            why = "path and host may not be used at the same time";
            return false;
        }
        if (o.count("path")) {
            if (o.count("port")) {
                why = "port may not be used without host";
                return false;
            }
            a.type = "unix";
            a.path = get(o, "path");
            return true;
        }
        if (o.count("host")) {
            a.type = "inet";
            a.host = get(o, "host");
            a.port = o.count("port") ? get(o, "port") : "10809";
            return true;
        }
    }
    if (!has_prefix(o, "server")) {
        why = "NBD server address missing";
        return false;
    }
    a.type = get(o, "server.type");
    if (a.type == "unix") {
        a.path = get(o, "server.path");
        if (a.path.empty()) {
            why = "Parameter 'server.path' is missing";
            return false;
        }
    } else if (a.type == "inet") {
        a.host = get(o, "server.host");
        if (a.host.empty()) {
            why = "Parameter 'server.host' is missing";
            return false;
        }
        a.port = get(o, "server.port");
        if (a.port.empty()) a.port = "10809";
    } else {
        why = a.type.empty() ? std::string("Parameter 'server.type' is missing")
                             : "Parameter 'server.type' does not accept value '" + a.type + "'";
        return false;
    }
    return true;
}

/// QEMU's name for an nbd node (nbd_refresh_filename).
std::string nbd_exact_name(const nbd_address& a) {
    if (a.type == "unix")
        return a.exp.empty() ? "nbd+unix://?socket=" + a.path : "nbd+unix:///" + a.exp + "?socket=" + a.path;
    return "nbd://" + a.host + ":" + a.port + (a.exp.empty() ? std::string{} : "/" + a.exp);
}

/// Resolve HOST:PORT on the blocking pool (getaddrinfo blocks): empty, or
/// QEMU's line for the failure.
boost::asio::awaitable<std::string> resolve_check(boost::asio::any_io_executor ex, std::string host, std::string port) {
    auto pool = blocking_pool();
    auto [why] = co_await boost::asio::async_initiate<decltype(co::use_tuple), void(std::string)>(
        [&pool, &ex, &host, &port](auto handler) {
            run_blocking(
                *pool, ex,
                [host, port] {
                    ::addrinfo hints{};
                    hints.ai_flags = AI_ADDRCONFIG;
                    hints.ai_socktype = SOCK_STREAM;
                    ::addrinfo* res = nullptr;
                    const int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
                    if (rc != 0)
                        return "address resolution failed for " + host + ":" + port + ": " + ::gai_strerror(rc);
                    ::freeaddrinfo(res);
                    return std::string{};
                },
                [h = std::move(handler)](std::string line) mutable { std::move(h)(std::move(line)); });
        },
        co::use_tuple);
    co_return why;
}

/// A number of seconds (QEMU's uint32 options of the nbd driver).
std::optional<unsigned> seconds_option(const std::string& v) {
    if (v.empty() || v.size() > 10 || v.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
    const unsigned long long n = std::stoull(v);
    if (n > 0xffffffffull) return std::nullopt;
    return static_cast<unsigned>(n);
}

/// driver=nbd (see nbd_address_of). Opened as the NBD URI the options
/// spell. reconnect-delay and open-timeout (seconds) are QEMU's: how long
/// requests wait for a new connection when the server is lost, and how long
/// a failing open keeps trying.
boost::asio::awaitable<file_result> nbd_driver(child_request r) {
    std::string bad;
    if (!only_keys(r, "nbd",
                   {"driver", "server.type", "server.path", "server.host", "server.port", "export", "host", "port",
                    "path", "reconnect-delay", "open-timeout"},
                   bad))
        co_return refuse(r, bad, errc::invalid_argument);
    unsigned reconnect_delay = 0;
    unsigned open_timeout = 0;
    for (const auto& [key, value] : {std::pair<const char*, unsigned*>{"reconnect-delay", &reconnect_delay},
                                     std::pair<const char*, unsigned*>{"open-timeout", &open_timeout}}) {
        if (!r.options.count(key)) continue;
        const auto n = seconds_option(get(r.options, key));
        if (!n) co_return refuse(r, std::string("Parameter '") + key + "' expects uint32", errc::invalid_argument);
        *value = *n;
    }
    nbd_address a;
    if (!nbd_address_of(r.options, a, bad)) co_return refuse(r, bad, errc::invalid_argument);
    std::string uri;
    if (a.type == "unix") {
        uri = "nbd+unix:///" + a.exp + "?socket=" + a.path;
    } else {
        // A name that does not resolve fails as in QEMU, naming host and port.
        auto resolving = resolve_check(r.ex, a.host, a.port);  // named: GCC 12 and coroutines
        const std::string why = co_await std::move(resolving);
        if (!why.empty()) co_return refuse(r, why, errc::invalid_argument);
        const bool v6 = a.host.find(':') != std::string::npos;
        uri = "nbd://" + (v6 ? "[" + a.host + "]" : a.host) + ":" + a.port + "/" + a.exp;
    }
    auto opening = open_path(std::move(r), uri, false, [reconnect_delay, open_timeout](file_options& fo) {
        fo.reconnect_delay = reconnect_delay;
        fo.open_timeout = open_timeout;
    });
    co_return co_await std::move(opening);
}

/// A number as QEMU's option parser reads one (qemu_strtou64, base 0).
bool qemu_number(const std::string& name, const std::string& v, std::string& why) {
    const char* begin = v.c_str();
    char* end = nullptr;
    errno = 0;
    (void)std::strtoull(begin, &end, 0);
    if (errno == ERANGE) {
        why = "Value '" + v + "' is too large for parameter '" + name + "'";
        return false;
    }
    if (v.empty() || end == begin || *end != '\0' || errno) {
        why = "Parameter '" + name + "' expects a number";
        return false;
    }
    return true;
}

/// An ssh node's options (QEMU's BlockdevOptionsSsh and its legacy keys):
/// server.host and server.port, or host and port (22 by default); path;
/// user; host-key-check.mode (known_hosts, none, hash with .type and
/// .hash), or host_key_check (yes, no, md5:H, sha1:H, sha256:H); or a
/// filename (an ssh:// name) in place of the location.
bool ssh_location_of(const node_options& o, ssh_location& w, std::string& why) {
    for (const auto& [k, v] : o) {
        static constexpr std::string_view known[] = {"driver",
                                                     "filename",
                                                     "host",
                                                     "port",
                                                     "path",
                                                     "user",
                                                     "host_key_check",
                                                     "server.host",
                                                     "server.port",
                                                     "host-key-check.mode",
                                                     "host-key-check.type",
                                                     "host-key-check.hash"};
        if (std::find(std::begin(known), std::end(known), k) != std::end(known)) continue;
        if (k.compare(0, 7, "server.") == 0)
            why = "ssh: option '" + k + "' is not supported (only server.host and server.port are)";
        else
            why = "Parameter '" + k + "' is unexpected";
        return false;
    }
    if (o.count("filename")) {
        for (const char* k : {"host", "port", "path", "user", "host_key_check"}) {
            if (o.count(k)) {
                why = std::string("Option '") + k + "' cannot be used with a file name";
                return false;
            }
        }
        if (has_prefix(o, "server")) {
            why = "Option '" + o.lower_bound("server.")->first + "' cannot be used with a file name";
            return false;
        }
        if (!parse_ssh_name(get(o, "filename"), w, why)) return false;
    } else {
        w = ssh_location{};
        if (o.count("port") && !o.count("host")) {
            why = "port may not be used without host";
            return false;
        }
        if (o.count("port") && !qemu_number("port", get(o, "port"), why)) return false;
        if (o.count("host")) {
            w.host = get(o, "host");
            w.port = o.count("port") ? get(o, "port") : "22";
        } else {
            if (!has_prefix(o, "server")) {
                why = "Parameter 'server' is missing";
                return false;
            }
            if (!o.count("server.host")) {
                why = "Parameter 'server.host' is missing";
                return false;
            }
            if (!o.count("server.port")) {
                why = "Parameter 'server.port' is missing";
                return false;
            }
            w.host = get(o, "server.host");
            w.port = get(o, "server.port");
        }
        if (!o.count("path")) {
            why = "Parameter 'path' is missing";
            return false;
        }
        w.path = get(o, "path");
        w.user = get(o, "user");
    }
    if (has_prefix(o, "host-key-check")) {
        using kc = ssh_location::key_check;
        if (!o.count("host-key-check.mode")) {
            why = "Parameter 'host-key-check.mode' is missing";
            return false;
        }
        const std::string mode = get(o, "host-key-check.mode");
        if (mode == "none") {
            w.check = kc::none;
        } else if (mode == "known_hosts") {
            w.check = kc::known_hosts;
        } else if (mode == "hash") {
            if (!o.count("host-key-check.type")) {
                why = "Parameter 'host-key-check.type' is missing";
                return false;
            }
            const std::string type = get(o, "host-key-check.type");
            if (type != "md5" && type != "sha1" && type != "sha256") {
                why = "Parameter 'type' does not accept value '" + type + "'";
                return false;
            }
            if (!o.count("host-key-check.hash")) {
                why = "Parameter 'host-key-check.hash' is missing";
                return false;
            }
            w.check = kc::hash;
            w.hash_type = type;
            w.hash = get(o, "host-key-check.hash");
        } else {
            why = "Parameter 'mode' does not accept value '" + mode + "'";
            return false;
        }
    }
    // The legacy key wins over host-key-check (QEMU writes it over them).
    if (o.count("host_key_check") && !parse_host_key_check(get(o, "host_key_check"), w, why)) return false;
    return true;
}

/// driver=ssh (see ssh_location_of), or a child named by an ssh:// file
/// name. The connection is made on the blocking pool.
boost::asio::awaitable<file_result> ssh_driver(child_request r) {
    ssh_location where;
    std::string why;
    if (!ssh_location_of(r.options, where, why)) co_return refuse(r, why, errc::invalid_argument);
    file_options fo;
    fo.read_only = r.open.read_only;
    fo.log = r.open.log;
    auto [ec, file] = co_await boost::asio::async_initiate<decltype(co::use_tuple), void(boost::system::error_code,
                                                                                         std::shared_ptr<block_file>)>(
        [&r, &where, &fo](auto handler) {
            async_open_ssh_file(r.ex, where, fo, std::string{}, file_open_handler(std::move(handler)));
        },
        co::use_tuple);
    if (ec) co_return file_result{ec, nullptr};
    co_return file_result{{}, std::move(file)};
}

/// Open a child node by its "driver" (the table below).
boost::asio::awaitable<file_result> open_child(child_request r);

/// driver=null-co (null-aio): `size` bytes (1 GiB by default) that read
/// as zeros and drop what is written. read-zeroes and latency-ns are
/// accepted as QEMU's; ours always reads zeros and adds no latency.
boost::asio::awaitable<file_result> null_driver(child_request r) {
    std::string bad;
    const std::string driver = get(r.options, "driver").empty() ? "null-co" : get(r.options, "driver");
    if (!only_keys(r, driver, {"driver", "filename", "size", "read-zeroes", "latency-ns"}, bad))
        co_return refuse(r, bad, errc::invalid_argument);
    const std::string name = get(r.options, "filename");
    if (!name.empty() && !is_null_name(name))
        co_return refuse(r, "The '" + driver + "' block driver takes no file name, not '" + name + "'",
                         errc::invalid_argument);
    std::uint64_t size = std::uint64_t{1} << 30;
    if (const std::string v = get(r.options, "size"); !v.empty()) {
        std::string why;
        const auto n = size_option(v, why);
        if (!n) co_return refuse(r, driver + ": Parameter 'size' expects a size (" + why + ")", errc::invalid_argument);
        size = *n;
    }
    co_return file_result(std::error_code{}, make_null_file(r.ex, size, r.open.read_only));
}

/// driver=blkdebug: QEMU's fault injection over the node `image` (a tree of
/// its own, or "x-image" / a blkdebug: file name), with `config` (a rules
/// file), `align`, and rules as lists: inject-error.N.KEY and set-state.N.KEY
/// (the rules file's keys; the file's rules come first, then the lists in
/// index order).
boost::asio::awaitable<file_result> blkdebug_driver(child_request r) {
    blkdebug_config config;
    node_options image;
    std::string why;
    auto bad = [&](const std::string& line) { return refuse(r, line, errc::invalid_argument); };
    if (const std::string name = get(r.options, "filename"); !name.empty()) {
        if (parse_blkdebug_name(name, config, why)) co_return bad(why);
        image["filename"] = config.image;
    }
    struct listed {
        blkdebug_rule rule;
        bool has_event = false;
    };
    std::map<std::pair<int, unsigned long>, listed> lists;  // (0 inject-error / 1 set-state, index)
    for (const auto& [k, v] : r.options) {
        if (k == "driver" || k == "filename") continue;
        if (k == "config") {
            config.config_file = v;
        } else if (k == "align") {
            const auto n = size_option(v, why);
            if (!n) co_return bad("Parameter 'align' expects a size (" + why + ")");
            config.align = *n;
        } else if (k == "x-image") {
            image["filename"] = v;
        } else if (k.compare(0, 6, "image.") == 0) {
            image[k.substr(6)] = v;
        } else if (k.compare(0, 13, "inject-error.") == 0 || k.compare(0, 10, "set-state.") == 0) {
            const bool inject = k[0] == 'i';
            const std::string rest = k.substr(inject ? 13 : 10);
            const auto dot = rest.find('.');
            const std::string index = rest.substr(0, dot);
            if (dot == std::string::npos || index.empty() ||
                index.find_first_not_of("0123456789") != std::string::npos || index.size() > 9)
                co_return bad("Block protocol 'blkdebug' doesn't support the option '" + k + "'");
            listed& l = lists[{inject ? 0 : 1, std::stoul(index)}];
            l.rule.action = inject ? blkdebug_rule::kind::inject_error : blkdebug_rule::kind::set_state;
            const std::string key = rest.substr(dot + 1);
            if (!set_blkdebug_rule_option(l.rule, key, v, why)) co_return bad(k + ": " + why);
            if (key == "event") l.has_event = true;
        } else if (k == "image") {
            co_return bad("option 'image' names a node by reference (not supported: give its options as image.*)");
        } else {
            co_return bad("Block protocol 'blkdebug' doesn't support the option '" + k + "'");
        }
    }
    if (image.empty()) co_return bad("blkdebug: Parameter 'image' is missing");
    std::vector<blkdebug_rule> rules;
    if (!config.config_file.empty() && read_blkdebug_rules(config.config_file, rules, why)) co_return bad(why);
    for (const auto& [at, l] : lists) {
        if (!l.has_event)
            co_return bad(std::string(at.first == 0 ? "inject-error." : "set-state.") + std::to_string(at.second) +
                          ": Missing event name for rule");
        rules.push_back(l.rule);
    }
    // (A named request: g++ 12 destroys a braced temporary inside co_await twice.)
    child_request below{r.ex, std::move(image), r.open, r.depth, r.chain, r.node};
    auto [ec, inner] = co_await open_child(std::move(below));
    if (ec) co_return file_result(ec, nullptr);
    auto file = make_blkdebug_file(std::move(inner), std::move(rules), config.align, ec);
    if (!file) co_return bad("Cannot meet constraints with align " + std::to_string(config.align));
    co_return file_result(std::error_code{}, std::move(file));
}

/// No driver: the file is named by "filename" (a path, a remote URI, or a
/// protocol's name: blkdebug: and null-co:// take their drivers' options).
boost::asio::awaitable<file_result> by_name_driver(child_request r) {
    const std::string path = get(r.options, "filename");
    if (is_blkdebug_name(path)) co_return co_await blkdebug_driver(std::move(r));
    if (is_null_name(path)) co_return co_await null_driver(std::move(r));
    if (is_ssh_name(path)) co_return co_await ssh_driver(std::move(r));
    std::string bad;
    if (!only_keys(r, "file", {"filename", "locking"}, bad)) co_return refuse(r, bad, errc::invalid_argument);
    if (path.empty()) co_return refuse(r, "A block device must be specified for \"file\"", errc::invalid_argument);
    auto opening = open_path(std::move(r), path, false);
    co_return co_await std::move(opening);
}

/// Let go of files opened for a node that then failed (nested images are
/// closed as images are).
boost::asio::awaitable<void> close_all(std::vector<std::shared_ptr<block_file>>& files) {
    for (auto& f : files) {
        block_file& file = *f;
        (void)co_await co::op([&file](op_handler h) { file.async_close(std::move(h)); });
    }
}

/// A QEMU boolean option: on/off (true/false, yes/no); nullopt otherwise.
std::optional<bool> bool_option(const std::string& v) {
    if (v == "on" || v == "true" || v == "yes") return true;
    if (v == "off" || v == "false" || v == "no") return false;
    return std::nullopt;
}

/// driver=quorum: the children (children.0, children.1... each a node of its
/// own), vote-threshold, read-pattern (quorum|fifo), rewrite-corrupted and
/// blkverify, as QEMU's quorum driver takes them (block_file/quorum_file.hpp).
boost::asio::awaitable<file_result> quorum_driver(child_request r) {
    auto bad = [&](const std::string& line) { return refuse(r, line, errc::invalid_argument); };
    quorum_options qo;
    qo.log = r.open.log;
    std::map<unsigned long, node_options> children;
    for (const auto& [k, v] : r.options) {
        if (k == "driver") continue;
        if (k == "vote-threshold") {
            const bool negative = !v.empty() && v[0] == '-';
            const std::string digits = negative ? v.substr(1) : v;
            if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos)
                co_return bad("Parameter 'vote-threshold' expects a number");
            // A negative number is below 1, a huge one above any number of children.
            qo.threshold = negative ? 0u : digits.size() > 9 ? ~0u : static_cast<unsigned>(std::stoul(digits));
        } else if (k == "read-pattern") {
            if (v != "quorum" && v != "fifo") co_return bad("Please set read-pattern as fifo or quorum");
            qo.fifo = v == "fifo";
        } else if (k == "rewrite-corrupted" || k == "blkverify") {
            const auto b = bool_option(v);
            if (!b) co_return bad("Parameter '" + k + "' expects 'on' or 'off'");
            (k == "blkverify" ? qo.blkverify : qo.rewrite_corrupted) = *b;
        } else if (k.compare(0, 9, "children.") == 0) {
            const std::string rest = k.substr(9);
            const auto dot = rest.find('.');
            const std::string index = rest.substr(0, dot);
            if (index.empty() || index.size() > 9 || index.find_first_not_of("0123456789") != std::string::npos)
                co_return bad("Option children is not a valid array");
            if (dot == std::string::npos)
                co_return bad("option '" + k + "' names a node by reference (not supported: give its options as " + k +
                              ".*)");
            children[std::stoul(index)][rest.substr(dot + 1)] = v;
        } else if (k == "children") {
            co_return bad("Option children is not a valid array");
        } else {
            co_return bad("Block format 'quorum' does not support the option '" + k + "'");
        }
    }
    // A missing vote-threshold is 0, refused below as QEMU does.
    unsigned long expect = 0;
    for (const auto& [i, o] : children)
        if (i != expect++) co_return bad("Option children is not a valid array");
    if (children.empty()) co_return bad("Number of provided children must be 1 or more");
    if (qo.threshold < 1) co_return bad("Parameter 'vote-threshold' expects a value >= 1");
    if (qo.threshold > children.size()) co_return bad("threshold may not exceed children count");
    std::vector<std::shared_ptr<block_file>> files;
    for (auto& [i, o] : children) {
        qo.names.push_back(node_display_name(o));
        // (A named request: g++ 12 destroys a braced temporary inside co_await twice.)
        child_request below{r.ex, std::move(o), r.open, r.depth, r.chain, r.node};
        auto [ec, f] = co_await open_child(std::move(below));
        if (ec) {
            co_await close_all(files);
            co_return file_result(ec, nullptr);
        }
        files.push_back(std::move(f));
    }
    std::string why;
    auto opened = files;
    auto q = make_quorum_file(std::move(files), std::move(qo), why);
    if (!q) {
        co_await close_all(opened);
        co_return bad(why);
    }
    co_return file_result(std::error_code{}, std::move(q));
}

/// driver=throttle: QEMU's throttle filter over its "file" node, a member
/// of the throttle group its "throttle-group" names (one of
/// open_options::throttle_groups, QEMU's throttle-group objects).
boost::asio::awaitable<file_result> throttle_driver(child_request r) {
    auto bad = [&](const std::string& line) { return refuse(r, line, errc::invalid_argument); };
    std::optional<std::string> group_name;
    for (const auto& [k, v] : r.options) {
        if (k == "driver" || k.compare(0, 5, "file.") == 0) continue;
        if (k == "throttle-group") {
            group_name = v;
        } else if (k == "file") {
            co_return bad("option 'file' names a node by reference (not supported: give its options as file.*)");
        } else {
            co_return bad("Block format 'throttle' does not support the option '" + k + "'");
        }
    }
    node_options file = sub_options(r.options, "file");
    if (file.empty()) co_return bad("A block device must be specified for \"file\"");
    if (!group_name) co_return bad("Please specify a throttle group");
    std::shared_ptr<throttle_group> group;
    for (const auto& g : r.open.throttle_groups)
        if (g && g->name() == *group_name) group = g;
    if (!group) co_return bad("Throttle group '" + *group_name + "' does not exist");
    child_request below{r.ex, std::move(file), r.open, r.depth, r.chain, r.node};
    auto [ec, inner] = co_await open_child(std::move(below));
    if (ec) co_return file_result(ec, nullptr);
    co_return file_result(std::error_code{}, make_throttle_file(std::move(inner), std::move(group)));
}

/// driver=qed / driver=raw below another format: the image is the file.
boost::asio::awaitable<file_result> nested_format_driver(child_request r) {
    open_options inner = r.open;
    inner.format.reset();
    auto [ec, dev] =
        co_await open_node(r.ex, std::move(r.options), std::nullopt, std::move(inner), r.depth, std::move(r.chain));
    if (ec) co_return file_result{ec, nullptr};
    co_return file_result{{}, std::make_shared<image_file>(std::move(dev))};
}

struct driver_entry {
    std::string_view name;
    child_driver open;
};

// The drivers a node's "file" may name. A new one (blkdebug, null-co...) is
// a function of type child_driver and one line here.
const driver_entry child_drivers[] = {
    {"", by_name_driver},
    {"file", file_driver},
    {"host_device", host_device_driver},
    {"host_cdrom", host_cdrom_driver},
    {"nbd", nbd_driver},
    {"ssh", ssh_driver},
    {"blkdebug", blkdebug_driver},
    {"null-co", null_driver},
    {"null-aio", null_driver},
    {"quorum", quorum_driver},
    {"throttle", throttle_driver},
    {"qed", nested_format_driver},
    {"raw", nested_format_driver},
};

const driver_entry* find_driver(std::string_view name) {
    for (const auto& d : child_drivers)
        if (d.name == name) return &d;
    return nullptr;
}

std::string unsupported(const std::string& driver) {
    std::string list;
    for (const auto& d : node_drivers()) list += (list.empty() ? "" : ", ") + d;
    return "Unknown driver '" + driver + "' (the drivers supported are " + list + ")";
}

boost::asio::awaitable<file_result> open_child(child_request r) {
    const std::string name = get(r.options, "driver");
    const driver_entry* d = find_driver(name);
    if (!d) co_return refuse(r, unsupported(name), errc::not_supported);
    co_return co_await d->open(std::move(r));
}

/// QEMU's exact file name of a node (bdrv_refresh_filename): a name that
/// opens the same node, where its options can all be spelled in one.
std::optional<std::string> exact_filename(const node_options& o) {
    const std::string driver = get(o, "driver");
    auto only = [&o](std::initializer_list<std::string_view> keys, std::string_view prefix = {}) {
        for (const auto& [k, v] : o) {
            if (std::find(keys.begin(), keys.end(), k) != keys.end()) continue;
            if (!prefix.empty() && k.compare(0, prefix.size(), prefix) == 0) continue;
            return false;
        }
        return true;
    };
    if (driver.empty() || parse_format(driver) || is_protocol(driver)) {
        // A named file (maybe below a format that adds nothing of its own).
        if (o.count("filename") && only({"driver", "filename", "locking"})) {
            const std::string name = get(o, "filename");
            if (is_ssh_name(name)) {
                ssh_location where;
                std::string why;
                if (parse_ssh_name(name, where, why)) {
                    std::string exact = ssh_exact_name(where);
                    if (!exact.empty()) return exact;
                }
            }
            return name;
        }
        if (is_protocol(driver) || !only({"driver"}, "file.") || !has_prefix(o, "file")) return std::nullopt;
        // The file's name, when the file is a protocol node: a format in a
        // format can't be named by its file alone.
        const node_options file = sub_options(o, "file");
        const std::string file_driver = get(file, "driver");
        if (!file_driver.empty() && parse_format(file_driver)) return std::nullopt;
        return exact_filename(file);
    }
    std::string why;
    if (driver == "nbd") {
        nbd_address a;
        if (!only({"driver", "host", "port", "path", "export"}, "server.") || !nbd_address_of(o, a, why))
            return std::nullopt;
        return nbd_exact_name(a);
    }
    if (driver == "ssh") {
        ssh_location where;
        if (!ssh_location_of(o, where, why)) return std::nullopt;
        std::string exact = ssh_exact_name(where);
        if (exact.empty()) return std::nullopt;
        return exact;
    }
    if (driver == "null-co" || driver == "null-aio") {
        if (!only({"driver", "filename", "latency-ns"})) return std::nullopt;
        return driver + "://";
    }
    if (driver == "blkdebug") {
        // The rules file and the image below; rules given as options, or an
        // alignment, can't be written in a blkdebug: name.
        if (!only({"driver", "config", "x-image"}, "image.")) return std::nullopt;
        std::optional<std::string> inner;
        if (has_prefix(o, "image"))
            inner = exact_filename(sub_options(o, "image"));
        else if (o.count("x-image"))
            inner = get(o, "x-image");
        if (!inner || inner->empty()) return std::nullopt;
        return "blkdebug:" + get(o, "config") + ":" + *inner;
    }
    return std::nullopt;
}

/// A key that is a value and a parent of other keys at once ("file": "x"
/// with "file.driver"): QEMU takes a string there as a node reference.
std::string mixed_key(const node_options& o) {
    for (const auto& [k, v] : o)
        if (has_prefix(o, k)) return k;
    return {};
}

}  // namespace

}  // namespace qed::detail

namespace qed {

std::string node_display_name(const node_options& options) {
    if (auto p = detail::plain_form(options)) return p->path;
    if (auto exact = detail::exact_filename(options)) return *exact;
    return json_name(options);
}

std::vector<std::string> node_drivers() {
    std::vector<std::string> out;
    for (const auto& d : detail::child_drivers)
        if (!d.name.empty()) out.emplace_back(d.name);
    std::sort(out.begin(), out.end());
    return out;
}

}  // namespace qed

namespace qed::detail {

std::optional<plain_node> plain_form(const node_options& o) {
    const std::string driver = get(o, "driver");
    plain_node out;
    if (is_protocol(driver)) {
        for (const auto& [k, v] : o)
            if (k != "driver" && k != "filename") return std::nullopt;
        out.path = get(o, "filename");
        if (out.path.empty()) return std::nullopt;
        out.format = image_format::raw;
        out.character_device = driver != "file";
        return out;
    }
    if (!driver.empty()) {
        out.format = parse_format(driver);
        if (!out.format) return std::nullopt;
    }
    const bool top_name = o.count("filename") != 0;
    std::string file_driver;
    for (const auto& [k, v] : o) {
        if (k == "driver" || k == "filename") continue;
        if (k == "file.filename" && !top_name) {
            out.path = v;
        } else if (k == "file.driver" && is_protocol(v)) {
            file_driver = v;
        } else {
            return std::nullopt;
        }
    }
    if (top_name) out.path = get(o, "filename");
    if (out.path.empty()) return std::nullopt;
    out.character_device = !file_driver.empty() && file_driver != "file";
    return out;
}

std::optional<std::string> name_directory(const std::string& name, std::string& why) {
    if (is_json_name(name)) {
        auto tree = parse_json_options(name, why);
        if (!tree) return std::nullopt;
        return node_directory(*tree, why);
    }
    if (is_blkdebug_name(name)) {
        blkdebug_config config;
        if (parse_blkdebug_name(name, config, why)) return std::nullopt;
        return name_directory(config.image, why);
    }
    if (is_null_name(name)) {
        why = "Cannot generate a base directory for null-co nodes";
        return std::nullopt;
    }
    if (is_remote_name(name)) {
        why = "a relative backing file name cannot be resolved against a remote image (" + name + ")";
        return std::nullopt;
    }
    const std::string path = without_file_protocol(name);
    const auto slash = path.rfind('/');
    return slash == std::string::npos ? std::string{} : path.substr(0, slash + 1);
}

std::optional<std::string> node_directory(const node_options& o, std::string& why) {
    const std::string driver = get(o, "driver");
    const auto filename = o.find("filename");
    if (driver.empty() || parse_format(driver) || is_protocol(driver)) {
        // A format's file name is its file's; a protocol node's is its own.
        if (filename != o.end()) return name_directory(filename->second, why);
        if (!is_protocol(driver) && has_prefix(o, "file")) return node_directory(sub_options(o, "file"), why);
        why = "Cannot generate a base directory for a node without a file name";
        return std::nullopt;
    }
    if (driver == "blkdebug") {  // the directory of the image below it
        if (filename != o.end()) return name_directory(filename->second, why);
        if (auto x = o.find("x-image"); x != o.end()) return name_directory(x->second, why);
        return node_directory(sub_options(o, "image"), why);
    }
    if (driver == "throttle") return node_directory(sub_options(o, "file"), why);  // a filter: its file's
    if (driver == "nbd") {
        why = "a relative backing file name cannot be resolved against a remote image (an nbd node)";
        return std::nullopt;
    }
    // quorum (its children may lie in different directories, so QEMU gives
    // none), null-co, and anything else.
    why = "Cannot generate a base directory for " + (driver == "null-aio" ? std::string("null-co") : driver) + " nodes";
    return std::nullopt;
}

std::optional<node_options> parse_json_name(const std::string& name, const open_options& open, std::error_code& ec) {
    std::string why;
    auto tree = parse_json_options(name, why);
    if (!tree) {
        log_line(open, name + ": " + why);
        ec = errc::invalid_argument;
        return std::nullopt;
    }
    if (const auto k = mixed_key(*tree); !k.empty()) {
        log_line(open, name + ": option '" + k +
                           "' is given both as a value and as a set of options "
                           "(node references are not supported)");
        ec = errc::invalid_argument;
        return std::nullopt;
    }
    ec.clear();
    return tree;
}

boost::asio::awaitable<device_result> open_node(boost::asio::any_io_executor ex, node_options options,
                                                std::optional<image_format> format, open_options open, unsigned depth,
                                                std::vector<file_identity> chain) {
    const std::string name = node_display_name(options);
    const std::string driver = get(options, "driver");
    auto fail = [&](const std::string& why, std::error_code ec) {
        log_line(open, name + ": " + why);
        return device_result{ec, nullptr};
    };
    child_request child{ex, {}, open, depth, chain, name};
    std::optional<image_format> fmt = format;
    if (driver.empty() || parse_format(driver)) {
        // A format node: its own options, and its file's below "file".
        if (!driver.empty()) {
            const auto f = parse_format(driver);
            if (format && *format != *f)
                co_return fail("the format given (" + std::string(to_string(*format)) + ") is not the driver '" +
                                   driver + "' the options name",
                               errc::invalid_argument);
            fmt = f;
        }
        for (const auto& [k, v] : options) {
            if (k == "driver" || k == "filename" || k.compare(0, 5, "file.") == 0) continue;
            co_return fail("Block format '" + (driver.empty() ? std::string("(probed)") : driver) +
                               "' does not support the option '" + k + "'",
                           errc::invalid_argument);
        }
        child.options = sub_options(options, "file");
        if (auto it = options.find("filename"); it != options.end()) {
            // The format's file name is its file's, with the file's other
            // options beside it (QEMU: "file.align=512" and blkdebug::IMG).
            if (child.options.count("filename") || child.options.count("driver"))
                co_return fail("Cannot specify both 'filename' and 'file' options", errc::invalid_argument);
            child.options["filename"] = it->second;
        }
        if (child.options.empty())
            co_return fail("A block device must be specified for \"file\"", errc::invalid_argument);
    } else if (find_driver(driver)) {
        // A protocol node opened on its own reads as raw bytes.
        if (format && *format != image_format::raw)
            co_return fail("driver '" + driver + "' is a protocol: its bytes read as raw, not as " +
                               std::string(to_string(*format)),
                           errc::invalid_argument);
        fmt = image_format::raw;
        child.options = std::move(options);
    } else {
        co_return fail(unsupported(driver), errc::not_supported);
    }
    const std::string child_driver_name = get(child.options, "driver");
    const driver_entry* d = find_driver(child_driver_name);
    if (!d) co_return fail(unsupported(child_driver_name), errc::not_supported);
    auto [ec, file] = co_await d->open(std::move(child));
    if (ec) co_return device_result{ec, nullptr};
    co_return co_await open_on_file(ex, std::move(file), name, fmt, std::move(open), depth, std::move(chain));
}

}  // namespace qed::detail
