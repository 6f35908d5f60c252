// SPDX-License-Identifier: BSL-1.0
// The SSH backend, on libssh's SFTP API, as QEMU's ssh driver works:
//
//  - Connecting: the TCP connection is made here (getaddrinfo, then each
//    address in turn), so failures read as QEMU's ("Failed to connect to
//    'HOST:PORT': Connection refused"); libssh gets the socket, reads
//    ~/.ssh/config, checks the host key (known_hosts, none, or a hash of
//    the key) and authenticates: "none" first, then public keys through
//    ssh_userauth_publickey_auto, which asks the ssh agent (SSH_AUTH_SOCK)
//    and tries the default keys (~/.ssh/id_*) -- what QEMU's driver does on
//    libssh, whatever its message about "your ssh-agent" says.
//  - I/O: sftp_seek64 + sftp_read (16 KiB requests, as QEMU: servers need
//    only take 32 KiB packets) and sftp_write (128 KiB); reads past the end
//    give zeros; flush is fsync@openssh.com when the server offers it (a
//    warning, once, when it doesn't, and the flush does nothing, as in
//    QEMU); resize is a setstat of the size (grows and shrinks; QEMU's
//    driver only grows); size is the size at open, kept up to date by the
//    writes and resizes made through this file.
//
// libssh is blocking. Every call on a session runs on the shared blocking
// pool, through a strand of the file's own, so calls on one session never
// overlap and none blocks the io_context; handlers are handed back to the
// file's executor (blocking_pool.hpp). The connection is closed on the pool
// too (async_close, or the destructor's hand-off).
#include "block_file/ssh_file.hpp"

#include <fcntl.h>
#include <libssh/libssh.h>
#include <libssh/sftp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cstring>
#include <functional>
#include <mutex>
#include <vector>

#include "block_file/blocking_pool.hpp"
#include "block_file/posix_io.hpp"
#include "block_file/uri.hpp"
#include "qed/error.hpp"

namespace qed::detail {

namespace asio = boost::asio;

bool is_ssh_name(std::string_view name) noexcept {
    return name.starts_with("ssh:");
}

namespace {

std::string current_user() {
    if (const ::passwd* pw = ::getpwuid(::getuid()); pw && pw->pw_name) return pw->pw_name;
    if (const char* u = std::getenv("USER"); u && *u) return u;
    return {};
}

/// QEMU reads the port with qemu_strtoui(.., 10): optional blanks and sign,
/// then decimal digits only, within an unsigned int.
bool numeric_port(const std::string& s, unsigned& out) {
    std::size_t i = 0;
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
    bool negative = false;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) negative = s[i++] == '-';
    if (i == s.size()) return false;
    unsigned long long v = 0;
    for (; i < s.size(); ++i) {
        if (s[i] < '0' || s[i] > '9') return false;
        v = v * 10 + static_cast<unsigned>(s[i] - '0');
        if (v > UINT_MAX) return false;
    }
    out = negative ? static_cast<unsigned>(0u - static_cast<unsigned>(v)) : static_cast<unsigned>(v);
    return true;
}

/// What a blocking step reports: an errno value and QEMU's line for it.
struct failure {
    int error = 0;
    std::string why;
};

/// The libssh session, SFTP session and remote file; closed in reverse order.
struct ssh_conn {
    ssh_session session = nullptr;
    ::sftp_session sftp = nullptr;
    ::sftp_file file = nullptr;
    ssh_conn() = default;
    ssh_conn(const ssh_conn&) = delete;
    ssh_conn& operator=(const ssh_conn&) = delete;
    ~ssh_conn() {
        if (file) ::sftp_close(file);
        if (sftp) ::sftp_free(sftp);
        if (session) {
            ::ssh_disconnect(session);
            ::ssh_free(session);  // closes the socket too
        }
    }

    std::string session_error(const std::string& what) const {
        if (!session) return what;
        return what + ": " + ::ssh_get_error(session) +
               " (libssh error code: " + std::to_string(::ssh_get_error_code(session)) + ")";
    }
    std::string sftp_error(const std::string& what) const {
        if (!sftp) return what;
        return what + ": " + ::ssh_get_error(session) +
               " (libssh error code: " + std::to_string(::ssh_get_error_code(session)) +
               ", sftp error code: " + std::to_string(::sftp_get_error(sftp)) + ")";
    }
    /// errno for the SFTP status of the last call.
    int sftp_errno() const {
        switch (sftp ? ::sftp_get_error(sftp) : SSH_FX_FAILURE) {
            case SSH_FX_NO_SUCH_FILE:
            case SSH_FX_NO_SUCH_PATH:
                return ENOENT;
            case SSH_FX_PERMISSION_DENIED:
                return EACCES;
            case SSH_FX_FILE_ALREADY_EXISTS:
                return EEXIST;
            case SSH_FX_WRITE_PROTECT:
                return EROFS;
            case SSH_FX_OP_UNSUPPORTED:
                return ENOTSUP;
            default:
                return EIO;
        }
    }
};

/// What a successful connection hands to the file.
struct connected {
    std::unique_ptr<ssh_conn> conn;
    std::uint64_t size = 0;
    bool can_fsync = false;
    failure fail;
};

void init_libssh() {
    static std::once_flag once;
    std::call_once(once, [] { ::ssh_init(); });
}

/// QEMU's inet_connect_saddr: resolve, then try each address.
int tcp_connect(const std::string& host, const std::string& port, failure& f) {
    ::addrinfo hints{};
    hints.ai_flags = AI_CANONNAME | AI_ADDRCONFIG | AI_V4MAPPED;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    ::addrinfo* res = nullptr;
    if (const int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
        f = {EIO, "address resolution failed for " + host + ":" + port + ": " + ::gai_strerror(rc)};
        return -1;
    }
    int last = ECONNREFUSED;
    int fd = -1;
    for (const ::addrinfo* a = res; a; a = a->ai_next) {
        fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            last = errno;
            continue;
        }
        int r;
        do r = ::connect(fd, a->ai_addr, a->ai_addrlen);
        while (r < 0 && errno == EINTR);
        if (r == 0) break;
        last = errno;
        ::close(fd);
        fd = -1;
    }
    ::freeaddrinfo(res);
    if (fd < 0) {
        f = {last, "Failed to connect to '" + host + ":" + port + "': " + std::strerror(last)};
        return -1;
    }
    // Small requests go out at once (QEMU does the same, and goes on if it can't).
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/// QEMU's comparison: colons may precede each byte's two hex digits, and
/// nothing may follow the last one.
bool fingerprint_matches(const unsigned char* fp, std::size_t len, const std::string& given) {
    std::size_t at = 0;
    for (std::size_t i = 0; i < len; ++i) {
        while (at < given.size() && given[at] == ':') ++at;
        if (at + 1 >= given.size()) return false;
        const int hi = hex_value(given[at]), lo = hex_value(given[at + 1]);
        if (hi < 0 || lo < 0 || hi * 16 + lo != fp[i]) return false;
        at += 2;
    }
    return at == given.size();
}

bool check_host_key(ssh_conn& c, const ssh_location& w, failure& f) {
    using kc = ssh_location::key_check;
    if (w.check == kc::none) return true;
    if (w.check == kc::hash) {
        const ssh_publickey_hash_type type = w.hash_type == "md5"    ? SSH_PUBLICKEY_HASH_MD5
                                             : w.hash_type == "sha1" ? SSH_PUBLICKEY_HASH_SHA1
                                                                     : SSH_PUBLICKEY_HASH_SHA256;
        ssh_key key = nullptr;
        if (::ssh_get_server_publickey(c.session, &key) != SSH_OK) {
            f = {EINVAL, c.session_error("failed to read remote host key")};
            return false;
        }
        const std::string key_type = ::ssh_key_type_to_char(::ssh_key_type(key));
        unsigned char* hash = nullptr;
        std::size_t len = 0;
        const int r = ::ssh_get_publickey_hash(key, type, &hash, &len);
        ::ssh_key_free(key);
        if (r != 0) {
            f = {EINVAL, c.session_error("failed reading the hash of the server SSH key")};
            return false;
        }
        const bool same = fingerprint_matches(hash, len, w.hash);
        std::string hex;
        static constexpr char digits[] = "0123456789abcdef";
        for (std::size_t i = 0; i < len; ++i) {
            hex += digits[hash[i] >> 4];
            hex += digits[hash[i] & 15];
        }
        ::ssh_clean_pubkey_hash(&hash);
        if (!same) {
            f = {EPERM, "remote host " + key_type + " key fingerprint '" + w.hash_type + ":" + hex +
                            "' does not match host_key_check '" + w.hash_type + ":" + w.hash + "'"};
            return false;
        }
        return true;
    }
    switch (const auto state = ::ssh_session_is_known_server(c.session)) {
        case SSH_KNOWN_HOSTS_OK:
            return true;
        case SSH_KNOWN_HOSTS_CHANGED: {
            std::string line = "host key does not match the one in known_hosts; this may be a possible attack";
            ssh_key key = nullptr;
            if (::ssh_get_server_publickey(c.session, &key) == SSH_OK) {
                unsigned char* hash = nullptr;
                std::size_t len = 0;
                const std::string key_type = ::ssh_key_type_to_char(::ssh_key_type(key));
                if (::ssh_get_publickey_hash(key, SSH_PUBLICKEY_HASH_SHA256, &hash, &len) == 0) {
                    if (char* fp = ::ssh_get_fingerprint_hash(SSH_PUBLICKEY_HASH_SHA256, hash, len)) {
                        line = "host key (" + key_type + " key with fingerprint " + fp +
                               ") does not match the one in known_hosts; this may be a possible attack";
                        ::ssh_string_free_char(fp);
                    }
                    ::ssh_clean_pubkey_hash(&hash);
                }
                ::ssh_key_free(key);
            }
            f = {EINVAL, line};
            return false;
        }
        case SSH_KNOWN_HOSTS_OTHER:
            f = {EINVAL, "host key for this server not found, another type exists"};
            break;
        case SSH_KNOWN_HOSTS_UNKNOWN:
            f = {EINVAL, "no host key was found in known_hosts"};
            break;
        case SSH_KNOWN_HOSTS_NOT_FOUND:
            f = {ENOENT, "known_hosts file not found"};
            break;
        case SSH_KNOWN_HOSTS_ERROR:
            f = {EINVAL, "error while checking the host"};
            break;
        default:
            f = {EINVAL, "error while checking for known server (" + std::to_string(static_cast<int>(state)) + ")"};
    }
    return false;
}

bool authenticate(ssh_conn& c, failure& f) {
    int r = ::ssh_userauth_none(c.session, nullptr);
    if (r == SSH_AUTH_ERROR) {
        f = {EPERM, c.session_error("failed to authenticate using none authentication")};
        return false;
    }
    if (r == SSH_AUTH_SUCCESS) return true;
    if (::ssh_userauth_list(c.session, nullptr) & SSH_AUTH_METHOD_PUBLICKEY) {
        r = ::ssh_userauth_publickey_auto(c.session, nullptr, nullptr);
        if (r == SSH_AUTH_ERROR) {
            f = {EINVAL, c.session_error("failed to authenticate using publickey authentication")};
            return false;
        }
        if (r == SSH_AUTH_SUCCESS) return true;
    }
    f = {EPERM, "failed to authenticate using publickey authentication and the identities held by your ssh-agent"};
    return false;
}

/// Everything QEMU's connect_to_ssh does, blocking, on the calling thread.
connected connect_ssh(const ssh_location& w, int flags) {
    connected out;
    failure& f = out.fail;
    init_libssh();
    const std::string user = w.user.empty() ? current_user() : w.user;
    if (user.empty()) {
        f = {ENOENT, "Can't get user name"};
        return out;
    }
    unsigned port = 0;
    if (!numeric_port(w.port, port)) {
        f = {EINVAL, "Use only numeric port value"};
        return out;
    }
    const int fd = tcp_connect(w.host, w.port, f);
    if (fd < 0) return out;
    auto c = std::make_unique<ssh_conn>();
    c->session = ::ssh_new();
    if (!c->session) {
        ::close(fd);
        f = {EINVAL, "failed to initialize libssh session"};
        return out;
    }
    ::ssh_set_blocking(c->session, 1);
    int sock = fd;
    if (::ssh_options_set(c->session, SSH_OPTIONS_USER, user.c_str()) < 0 ||
        ::ssh_options_set(c->session, SSH_OPTIONS_HOST, w.host.c_str()) < 0 ||
        (port > 0 && ::ssh_options_set(c->session, SSH_OPTIONS_PORT, &port) < 0) ||
        ::ssh_options_set(c->session, SSH_OPTIONS_COMPRESSION, "none") < 0) {
        ::close(fd);
        f = {EINVAL, c->session_error("failed to set the options of the libssh session")};
        return out;
    }
    if (::ssh_options_parse_config(c->session, nullptr) < 0) {
        ::close(fd);
        f = {EINVAL, c->session_error("failed to parse ~/.ssh/config")};
        return out;
    }
    if (::ssh_options_set(c->session, SSH_OPTIONS_FD, &sock) < 0) {
        ::close(fd);
        f = {EINVAL, c->session_error("failed to set the socket in the libssh session")};
        return out;
    }
    // From here on libssh owns the socket.
    if (::ssh_connect(c->session) != SSH_OK) {
        f = {EIO, c->session_error("failed to establish SSH session")};
        return out;
    }
    if (!check_host_key(*c, w, f) || !authenticate(*c, f)) return out;
    c->sftp = ::sftp_new(c->session);
    if (!c->sftp) {
        f = {EINVAL, c->session_error("failed to create sftp handle")};
        return out;
    }
    if (::sftp_init(c->sftp) < 0) {
        f = {EINVAL, c->sftp_error("failed to initialize sftp handle")};
        return out;
    }
    c->file = ::sftp_open(c->sftp, w.path.c_str(), flags, 0644);
    if (!c->file) {
        f = {c->sftp_errno(), c->sftp_error("failed to open remote file '" + w.path + "'")};
        return out;
    }
    ::sftp_attributes attrs = ::sftp_fstat(c->file);
    if (!attrs) {
        f = {c->sftp_errno(), c->sftp_error("failed to read file attributes")};
        return out;
    }
    out.size = attrs->size;
    const bool directory = attrs->type == SSH_FILEXFER_TYPE_DIRECTORY;
    ::sftp_attributes_free(attrs);
    if (directory) {
        f = {EISDIR, "failed to open remote file '" + w.path + "': Is a directory"};
        return out;
    }
    out.can_fsync = ::sftp_extension_supported(c->sftp, "fsync@openssh.com", "1") == 1;
    out.conn = std::move(c);
    return out;
}

// Request sizes: QEMU's (servers must take 32 KiB packets; OpenSSH takes 256 KiB).
constexpr std::size_t read_request = 16 * 1024;
constexpr std::size_t write_request = 128 * 1024;

/// The result of one blocking I/O call: errno (0 on success) and a line.
struct io_result {
    int error = 0;
    std::string why;
    std::size_t bytes = 0;
};

class ssh_file final : public block_file, public std::enable_shared_from_this<ssh_file> {
public:
    ssh_file(asio::any_io_executor ex, connected c, ssh_location where, std::string name, bool read_only,
             std::function<void(std::string_view)> log)
        : ex_(std::move(ex)),
          pool_(blocking_pool()),
          strand_(asio::make_strand(pool_->get_executor())),
          conn_(std::move(c.conn)),
          where_(std::move(where)),
          name_(std::move(name)),
          read_only_(read_only),
          can_fsync_(c.can_fsync),
          log_(std::move(log)),
          size_(c.size) {
        identity_ = {0x535348ull << 40, std::hash<std::string>{}(name_)};
    }

    ~ssh_file() override {
        // Not closed: let go of the connection on the pool, not here (this
        // may be the io_context's thread). If the pool is gone or stopped,
        // the lambda is destroyed unrun and the connection closes then.
        if (conn_) asio::post(*pool_, [c = std::shared_ptr<ssh_conn>(std::move(conn_))]() mutable { c.reset(); });
    }

    executor_type get_executor() const override { return ex_; }

    void async_read_at(std::uint64_t offset, std::span<const asio::mutable_buffer> buffers,
                       io_handler handler) override {
        std::vector<asio::mutable_buffer> bufs(buffers.begin(), buffers.end());
        run([this, offset, bufs = std::move(bufs)] { return read(offset, bufs); }, std::move(handler));
    }

    void async_write_at(std::uint64_t offset, std::span<const asio::const_buffer> buffers,
                        io_handler handler) override {
        if (read_only_) return fail_now(std::move(handler), EBADF);
        std::vector<asio::const_buffer> bufs(buffers.begin(), buffers.end());
        run([this, offset, bufs = std::move(bufs)] { return write(offset, bufs); }, std::move(handler));
    }

    void async_flush(op_handler handler) override {
        if (!can_fsync_) {
            if (!warned_fsync_ && log_) {
                warned_fsync_ = true;
                log_("warning: ssh server " + where_.host +
                     " does not support fsync: to support fsync, you need OpenSSH >= 6.3");
            }
            return asio::post(ex_, [h = std::move(handler)]() mutable { std::move(h)(std::error_code{}); });
        }
        run_op(
            [this]() -> io_result {
                if (!conn_) return {EBADF, "the file is closed"};
                if (::sftp_fsync(conn_->file) < 0) return {EIO, conn_->sftp_error("fsync failed")};
                return {};
            },
            std::move(handler));
    }

    void async_resize(std::uint64_t size, op_handler handler) override {
        if (read_only_) return asio::post(ex_, [h = std::move(handler)]() mutable { std::move(h)(errno_code(EBADF)); });
        run_op(
            [this, size]() -> io_result {
                if (!conn_) return {EBADF, "the file is closed"};
                sftp_attributes_struct attrs{};
                attrs.flags = SSH_FILEXFER_ATTR_SIZE;
                attrs.size = size;
                if (::sftp_setstat(conn_->sftp, where_.path.c_str(), &attrs) < 0)
                    return {conn_->sftp_errno(),
                            conn_->sftp_error("failed to resize the file to " + std::to_string(size) + " bytes")};
                size_.store(size);
                return {};
            },
            std::move(handler));
    }

    void async_close(op_handler handler) override {
        run_op(
            [this]() -> io_result {
                conn_.reset();
                return {};
            },
            std::move(handler));
    }

    std::uint64_t size(std::error_code& ec) const override {
        ec.clear();
        return size_.load();
    }
    file_identity identity() const noexcept override { return identity_; }
    bool read_only() const noexcept override { return read_only_; }
    const char* backend_name() const noexcept override { return "ssh"; }

private:
    // On the strand: the calls below are never concurrent.
    io_result read(std::uint64_t offset, const std::vector<asio::mutable_buffer>& bufs) {
        io_result r;
        for (const auto& b : bufs) r.bytes += b.size();
        if (!conn_) return {EBADF, "the file is closed", 0};
        if (r.bytes == 0) return r;
        if (::sftp_seek64(conn_->file, offset) < 0) return {EIO, conn_->sftp_error("seek failed"), 0};
        bool eof = false;
        for (const auto& b : bufs) {
            auto* p = static_cast<char*>(b.data());
            std::size_t left = b.size();
            while (left && !eof) {
                const ssize_t n = ::sftp_read(conn_->file, p, std::min(left, read_request));
                if (n == 0) {
                    eof = true;
                    break;
                }
                if (n < 0) {
                    if (::sftp_get_error(conn_->sftp) == SSH_FX_EOF) {
                        eof = true;
                        break;
                    }
                    return {EIO,
                            conn_->sftp_error("read of " + std::to_string(r.bytes) + " bytes at offset " +
                                              std::to_string(offset) + " failed"),
                            0};
                }
                p += n;
                left -= static_cast<std::size_t>(n);
            }
            // Past the end of the file: zeros.
            if (left) std::memset(p, 0, left);
        }
        return r;
    }

    io_result write(std::uint64_t offset, const std::vector<asio::const_buffer>& bufs) {
        io_result r;
        for (const auto& b : bufs) r.bytes += b.size();
        if (!conn_) return {EBADF, "the file is closed", 0};
        if (r.bytes == 0) return r;
        if (::sftp_seek64(conn_->file, offset) < 0) return {EIO, conn_->sftp_error("seek failed"), 0};
        std::uint64_t at = offset;
        for (const auto& b : bufs) {
            const auto* p = static_cast<const char*>(b.data());
            std::size_t left = b.size();
            while (left) {
                const ssize_t n = ::sftp_write(conn_->file, p, std::min(left, write_request));
                if (n <= 0)
                    return {EIO,
                            conn_->sftp_error("write of " + std::to_string(r.bytes) + " bytes at offset " +
                                              std::to_string(offset) + " failed"),
                            0};
                p += n;
                left -= static_cast<std::size_t>(n);
                at += static_cast<std::uint64_t>(n);
                // The file grows as writes pass its end.
                std::uint64_t seen = size_.load();
                while (at > seen && !size_.compare_exchange_weak(seen, at)) {
                }
            }
        }
        return r;
    }

    template <class Work>
    void run(Work work, io_handler handler) {
        run_blocking_on(strand_, ex_, std::move(work),
                        [self = shared_from_this(), h = std::move(handler)](io_result r) mutable {
                            self->note(r);
                            std::move(h)(r.error ? errno_code(r.error) : std::error_code{}, r.error ? 0 : r.bytes);
                        });
    }

    template <class Work>
    void run_op(Work work, op_handler handler) {
        run_blocking_on(strand_, ex_, std::move(work),
                        [self = shared_from_this(), h = std::move(handler)](io_result r) mutable {
                            self->note(r);
                            std::move(h)(r.error ? errno_code(r.error) : std::error_code{});
                        });
    }

    void fail_now(io_handler h, int e) {
        asio::post(ex_, [h = std::move(h), e]() mutable { std::move(h)(errno_code(e), std::size_t{0}); });
    }

    // On the executor: the first failure is logged (the next are most
    // likely the same broken connection).
    void note(const io_result& r) {
        if (!r.error || logged_failure_ || !log_ || r.why.empty()) return;
        logged_failure_ = true;
        log_(name_ + ": " + r.why);
    }

    asio::any_io_executor ex_;
    std::shared_ptr<asio::thread_pool> pool_;
    asio::strand<asio::thread_pool::executor_type> strand_;
    std::unique_ptr<ssh_conn> conn_;  // used on the strand only
    ssh_location where_;
    std::string name_;
    bool read_only_;
    bool can_fsync_;
    bool warned_fsync_ = false;
    bool logged_failure_ = false;
    std::function<void(std::string_view)> log_;
    std::atomic<std::uint64_t> size_;
    file_identity identity_;
};

int open_flags(const file_options& o) {
    if (o.read_only) return O_RDONLY;
    return o.create ? O_RDWR | O_CREAT | O_TRUNC : O_RDWR;
}

}  // namespace

bool parse_host_key_check(const std::string& text, ssh_location& out, std::string& why) {
    using kc = ssh_location::key_check;
    out.legacy_check = text;
    out.hash_type.clear();
    out.hash.clear();
    if (text == "no") {
        out.check = kc::none;
    } else if (text == "yes") {
        out.check = kc::known_hosts;
    } else {
        for (const char* type : {"md5", "sha1", "sha256"}) {
            const std::string prefix = std::string(type) + ":";
            if (text.compare(0, prefix.size(), prefix) == 0) {
                out.check = kc::hash;
                out.hash_type = type;
                out.hash = text.substr(prefix.size());
                return true;
            }
        }
        why = "unknown host_key_check setting (" + text + ")";
        return false;
    }
    return true;
}

bool parse_ssh_name(std::string_view name, ssh_location& out, std::string& why) {
    out = ssh_location{};
    std::string_view rest = name.substr(4);  // "ssh:"
    // The fragment goes first, then the query.
    if (const auto hash = rest.find('#'); hash != std::string_view::npos) rest = rest.substr(0, hash);
    std::string_view query;
    if (const auto q = rest.find('?'); q != std::string_view::npos) {
        query = rest.substr(q + 1);
        rest = rest.substr(0, q);
    }
    std::string_view authority, path = rest;
    if (rest.starts_with("//")) {
        rest.remove_prefix(2);
        const auto slash = rest.find('/');
        authority = rest.substr(0, slash);
        path = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash);
    }
    std::string_view hostport = authority;
    if (const auto at = authority.rfind('@'); at != std::string_view::npos) {
        out.user = percent_decoded(authority.substr(0, at));
        hostport = authority.substr(at + 1);
    }
    std::string_view host = hostport, port;
    if (hostport.starts_with('[')) {
        // An IPv6 address (QEMU keeps the brackets and then can't resolve it).
        const auto close = hostport.find(']');
        if (close == std::string_view::npos) {
            why = "Parameter 'server' is missing";
            return false;
        }
        host = hostport.substr(1, close - 1);
        if (close + 1 < hostport.size()) {
            if (hostport[close + 1] != ':') {
                why = "Parameter 'server' is missing";
                return false;
            }
            port = hostport.substr(close + 2);
            if (port.empty()) port = "x";  // "[::1]:" is as malformed as "host:"
        }
    } else if (const auto colon = hostport.rfind(':'); colon != std::string_view::npos) {
        host = hostport.substr(0, colon);
        port = hostport.substr(colon + 1);
        if (port.empty()) port = "x";
    }
    if (!port.empty()) {
        // A port that isn't a number up to 65535 makes the name no URI at
        // all for QEMU, which then misses the server.
        unsigned long v = 0;
        const bool digits =
            port.size() <= 5 && std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; });
        if (digits) v = std::stoul(std::string(port));
        if (!digits || v > 65535) {
            why = "Parameter 'server' is missing";
            return false;
        }
        if (v != 0) out.port = std::to_string(v);
    }
    out.host = percent_decoded(host);
    if (out.host.empty()) {
        why = "missing hostname in URI";
        return false;
    }
    out.path = percent_decoded(path);
    if (out.path.empty()) {
        why = "missing remote path in URI";
        return false;
    }
    // Query parameters: host_key_check is the one QEMU understands.
    while (!query.empty()) {
        const auto amp = query.find_first_of("&;");
        const std::string_view item = query.substr(0, amp);
        query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
        const auto eq = item.find('=');
        if (percent_decoded(item.substr(0, eq)) != "host_key_check") continue;
        const std::string value = eq == std::string_view::npos ? std::string{} : percent_decoded(item.substr(eq + 1));
        if (!parse_host_key_check(value, out, why)) return false;
    }
    return true;
}

std::string ssh_exact_name(const ssh_location& w) {
    const std::string user = w.user.empty() ? current_user() : w.user;
    if (user.empty()) return {};
    std::string name = "ssh://" + user + "@" + w.host + ":" + w.port + w.path;
    if (!w.legacy_check.empty()) name += "?host_key_check=" + w.legacy_check;
    return name;
}

std::shared_ptr<block_file> open_ssh_file(const asio::any_io_executor& ex, const ssh_location& where,
                                          const file_options& options, const std::string& name, std::error_code& ec) {
    connected c = connect_ssh(where, open_flags(options));
    if (!c.conn) {
        ec = errno_code(c.fail.error ? c.fail.error : EIO);
        if (options.log) options.log(name.empty() ? c.fail.why : name + ": " + c.fail.why);
        return nullptr;
    }
    ec.clear();
    std::string shown = ssh_exact_name(where);
    return std::make_shared<ssh_file>(ex, std::move(c), where, shown.empty() ? name : shown, options.read_only,
                                      options.log);
}

void async_open_ssh_file(const asio::any_io_executor& ex, ssh_location where, file_options options, std::string name,
                         file_open_handler handler) {
    const int flags = open_flags(options);
    auto pool = blocking_pool();
    run_blocking(
        *pool, ex, [where, flags] { return std::make_shared<connected>(connect_ssh(where, flags)); },
        [ex, where, options = std::move(options), name = std::move(name), h = std::move(handler),
         pool](std::shared_ptr<connected> c) mutable {
            if (!c->conn) {
                if (options.log) options.log(name.empty() ? c->fail.why : name + ": " + c->fail.why);
                return std::move(h)(errno_code(c->fail.error ? c->fail.error : EIO), nullptr);
            }
            std::string shown = ssh_exact_name(where);
            auto file = std::make_shared<ssh_file>(ex, std::move(*c), where, shown.empty() ? name : shown,
                                                   options.read_only, options.log);
            std::move(h)(boost::system::error_code{}, std::move(file));
        });
}

}  // namespace qed::detail
