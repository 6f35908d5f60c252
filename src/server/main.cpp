// SPDX-License-Identifier: BSL-1.0
// qed-nbd: serve a QED (or raw) image over NBD, or several at once, each
// under its own export name (--export, --dir). The single-image command
// line follows qemu-nbd's so that one can stand in for the other in scripts.
#include <fcntl.h>
#include <getopt.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <iostream>
#include <limits>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "qed/version.hpp"
#include "server/exports.hpp"
#include "server/list_exports.hpp"
#include "server/nbd_server.hpp"

namespace {

void usage(std::ostream& out) {
    out << "Usage: qed-nbd [OPTIONS] FILE\n"
           "       qed-nbd [OPTIONS] --export name=NAME,file=FILE[,...]... [--dir DIR]...\n"
           "       qed-nbd [OPTIONS] --dir DIR...\n"
           "Serve a QED or raw disk image over NBD (options as qemu-nbd's), or several\n"
           "images at once, each under its own export name.\n"
           "\n"
           "      --export=name=NAME,file=FILE[,readonly=on|off][,format=qed|raw][,description=TEXT]\n"
           "                            serve FILE as export NAME (may be repeated; \",,\" is a\n"
           "                            literal comma; readonly defaults to -r, format to probe)\n"
           "      --dir=DIR             serve every QED image in DIR, named by its file name\n"
           "                            (may be repeated; other files are skipped and logged)\n"
           "                            With --export/--dir: no FILE, -x, -D, -f or -L; a client\n"
           "                            must name its export (\"\" only reaches an export \"\")\n"
           "\n"
           "  -p, --port=PORT           TCP port to listen on (default 10809)\n"
           "  -b, --bind=IFACE          address to bind to (default 127.0.0.1)\n"
           "  -k, --socket=PATH         listen on a Unix socket instead of TCP\n"
           "  -x, --export-name=NAME    export name (default \"\")\n"
           "  -D, --description=TEXT    export description\n"
           "  -f, --format=FORMAT       image format: qed or raw (default: probe)\n"
           "  -r, --read-only           export read-only (with --export/--dir: every export)\n"
           "  -e, --shared=NUM          serve NUM clients at once (default 1; 0: no limit);\n"
           "                            with several exports: NUM clients in all, whatever\n"
           "                            export each one uses (not NUM per export)\n"
           "  -t, --persistent          keep running after the last client disconnects\n"
           "      --cache=MODE          none, writeback (default), writethrough, directsync\n"
           "  -n, --nocache             same as --cache=none\n"
           "      --discard=MODE        ignore (default: TRIM not offered) or unmap (TRIM\n"
           "                            gives whole clusters' space back to the host)\n"
           "      --aio=MODE            io_uring or threads (default: io_uring if available)\n"
           "      --allow-backing-dir=DIR\n"
           "                            backing files must lie in DIR (default: the\n"
           "                            image's own directory)\n"
           "      --allow-remote-backing\n"
           "                            also accept backing files on nbd:// and rbd:\n"
           "      --handshake-limit=N   seconds a client may take to negotiate (default 10)\n"
           "      --threads=N           threads serving the exports (default: the number of\n"
           "                            cores; at most one per export is used: each export's\n"
           "                            image and clients live on one of them)\n"
           "      --memory-limit=SIZE   bytes of request buffers all clients together (of\n"
           "                            all exports) may hold (default 256M; then clients wait)\n"
           "      --connection-memory-limit=SIZE\n"
           "                            the same for each client (default 64M)\n"
           "      --object=tls-creds-x509,id=ID,endpoint=server,dir=DIR[,verify-peer=on|off]\n"
           "      --object=tls-creds-psk,id=ID,endpoint=server,dir=DIR\n"
           "      --object=authz-simple,id=ID,identity=NAME\n"
           "                            TLS credentials (DIR/ca-cert.pem, server-cert.pem,\n"
           "                            server-key.pem; or DIR/keys.psk) and a client allowed\n"
           "                            by certificate DN or PSK user name\n"
           "      --tls-creds=ID        require TLS with the credentials object ID\n"
           "      --tls-authz=ID        allow only the client named by authz object ID\n"
           "                            (may be repeated: any of them is allowed)\n"
           "      --pid-file=PATH       write the server's pid to PATH once it listens\n"
           "      --fork                run in the background once the server listens\n"
           "  -s, --snapshot            serve a temporary overlay: writes are discarded at exit\n"
           "      --detect-zeroes=MODE  off (default), on or unmap: writes of zeros become\n"
           "                            zero clusters (unmap: holes where whole clusters)\n"
           "  -A, --allocation-depth    accepted; qemu:allocation-depth is always offered\n"
           "  -L, --list                list the exports of the server at -k or -b/-p\n"
           "  -c, -d                    not supported: use nbd-client for /dev/nbdX\n"
           "  -v, --verbose             report clients and errors on stderr\n"
           "  -h, --help                show this help\n"
           "  -V, --version             show the version\n"
           "\n"
           "Without --persistent, qed-nbd exits after the last client (of any export)\n"
           "disconnects. SIGINT/SIGTERM: finish requests in flight, flush, close the\n"
           "images, exit 0.\n";
}

bool parse_unsigned(const char* s, unsigned long max, unsigned long& out) {
    if (!s || !*s) return false;
    char* end = nullptr;
    errno = 0;
    const unsigned long v = std::strtoul(s, &end, 10);
    if (errno || *end || s[0] == '-' || v > max) return false;
    out = v;
    return true;
}

enum long_only {
    opt_cache = 256,
    opt_aio,
    opt_allow_backing_dir,
    opt_pid_file,
    opt_fork,
    opt_handshake_limit,
    opt_object,
    opt_tls_creds,
    opt_tls_authz,
    opt_memory_limit,
    opt_connection_memory_limit,
    opt_detect_zeroes,
    opt_discard,
    opt_allow_remote_backing,
    opt_export,
    opt_dir,
    opt_threads,
};

/// "64M", "1G", "65536": bytes; false if malformed or out of range.
bool parse_size(const char* s, std::uint64_t& out) {
    if (!s || !*s || *s == '-') return false;
    char* end = nullptr;
    errno = 0;
    const unsigned long long v = std::strtoull(s, &end, 10);
    if (errno || end == s) return false;
    unsigned shift = 0;
    const std::string suffix = end;
    if (suffix.empty() || suffix == "B" || suffix == "b")
        shift = 0;
    else if (suffix == "K" || suffix == "k")
        shift = 10;
    else if (suffix == "M" || suffix == "m")
        shift = 20;
    else if (suffix == "G" || suffix == "g")
        shift = 30;
    else if (suffix == "T" || suffix == "t")
        shift = 40;
    else
        return false;
    if (v > (std::numeric_limits<std::uint64_t>::max() >> shift)) return false;
    out = static_cast<std::uint64_t>(v) << shift;
    return true;
}

/// Resolve --tls-creds / --tls-authz against the --object list.
int resolve_tls(const std::vector<qed::nbd::tls_object>& objects, const std::string& creds_id,
                const std::vector<std::string>& authz_ids, qed::nbd::server_options& o, std::string& error) {
    using kind = qed::nbd::tls_object::kind;
    for (std::size_t i = 0; i < objects.size(); ++i)
        for (std::size_t j = 0; j < i; ++j)
            if (objects[i].id == objects[j].id) {
                error = "--object: duplicate id '" + objects[i].id + "'";
                return 1;
            }
    auto find = [&](const std::string& id) -> const qed::nbd::tls_object* {
        for (const auto& ob : objects)
            if (ob.id == id) return &ob;
        return nullptr;
    };
    if (creds_id.empty()) {
        if (!authz_ids.empty()) {
            error = "--tls-authz is not allowed without --tls-creds";
            return 1;
        }
        return 0;
    }
    const auto* creds = find(creds_id);
    if (!creds || creds->type == kind::authz_simple) {
        error = "--tls-creds: no tls-creds-x509 or tls-creds-psk object with id '" + creds_id + "'";
        return 1;
    }
    qed::nbd::tls_settings t;
    t.creds = *creds;
    for (const auto& id : authz_ids) {
        const auto* a = find(id);
        if (!a || a->type != kind::authz_simple) {
            error = "--tls-authz: no authz-simple object with id '" + id + "'";
            return 1;
        }
        t.allowed.push_back(a->identity);
    }
    o.tls = std::move(t);
    return 0;
}

/// Parses argv into `o`; returns -1 to go on, or an exit code.
int parse(int argc, char** argv, qed::nbd::server_options& o, bool& fork_mode) {
    static const option longs[] = {
        {"port", required_argument, nullptr, 'p'},
        {"bind", required_argument, nullptr, 'b'},
        {"socket", required_argument, nullptr, 'k'},
        {"export-name", required_argument, nullptr, 'x'},
        {"description", required_argument, nullptr, 'D'},
        {"format", required_argument, nullptr, 'f'},
        {"read-only", no_argument, nullptr, 'r'},
        {"shared", required_argument, nullptr, 'e'},
        {"persistent", no_argument, nullptr, 't'},
        {"nocache", no_argument, nullptr, 'n'},
        {"cache", required_argument, nullptr, opt_cache},
        {"discard", required_argument, nullptr, opt_discard},
        {"aio", required_argument, nullptr, opt_aio},
        {"allow-backing-dir", required_argument, nullptr, opt_allow_backing_dir},
        {"allow-remote-backing", no_argument, nullptr, opt_allow_remote_backing},
        {"export", required_argument, nullptr, opt_export},
        {"dir", required_argument, nullptr, opt_dir},
        {"pid-file", required_argument, nullptr, opt_pid_file},
        {"fork", no_argument, nullptr, opt_fork},
        {"handshake-limit", required_argument, nullptr, opt_handshake_limit},
        {"object", required_argument, nullptr, opt_object},
        {"tls-creds", required_argument, nullptr, opt_tls_creds},
        {"tls-authz", required_argument, nullptr, opt_tls_authz},
        {"memory-limit", required_argument, nullptr, opt_memory_limit},
        {"threads", required_argument, nullptr, opt_threads},
        {"allocation-depth", no_argument, nullptr, 'A'},
        {"detect-zeroes", required_argument, nullptr, opt_detect_zeroes},
        {"snapshot", no_argument, nullptr, 's'},
        {"list", no_argument, nullptr, 'L'},
        {"connect", required_argument, nullptr, 'c'},
        {"disconnect", required_argument, nullptr, 'd'},
        {"connection-memory-limit", required_argument, nullptr, opt_connection_memory_limit},
        {"verbose", no_argument, nullptr, 'v'},
        {"help", no_argument, nullptr, 'h'},
        {"version", no_argument, nullptr, 'V'},
        {nullptr, 0, nullptr, 0},
    };
    auto fail = [](const std::string& msg) {
        std::cerr << "qed-nbd: " << msg << "\nTry 'qed-nbd --help' for more information.\n";
        return 1;
    };
    bool tcp_given = false;
    unsigned long n = 0;
    std::vector<qed::nbd::tls_object> objects;
    std::string tls_creds;
    std::vector<std::string> tls_authz;
    bool list_mode = false;
    // The single-image options that --export/--dir replace, by name as given.
    std::string single_only;
    std::vector<qed::nbd::export_spec> specs;
    std::vector<std::string> dirs;
    std::optional<qed::image_format> format;
    bool read_only = false;
    std::string export_name;
    std::string description;
    opterr = 0;
    for (;;) {
        const int c = ::getopt_long(argc, argv, ":p:b:k:x:D:f:re:tnvhVAsLc:d:", longs, nullptr);
        if (c == -1) break;
        switch (c) {
            case 'p':
                if (!parse_unsigned(optarg, 65535, n) || n == 0)
                    return fail(std::string("invalid port '") + optarg + "'");
                o.port = static_cast<std::uint16_t>(n);
                tcp_given = true;
                break;
            case 'b':
                o.bind_address = optarg;
                tcp_given = true;
                break;
            case 'k':
                o.socket_path = optarg;
                break;
            case 'x':
                export_name = optarg;
                if (single_only.empty()) single_only = "-x/--export-name";
                break;
            case 'D':
                description = optarg;
                if (single_only.empty()) single_only = "-D/--description";
                break;
            case 'f': {
                auto f = qed::parse_format(optarg);
                if (!f) return fail(std::string("unknown format '") + optarg + "' (qed or raw)");
                format = f;
                if (single_only.empty()) single_only = "-f/--format";
                break;
            }
            case 'r':
                read_only = true;
                break;
            case opt_export: {
                std::string why;
                auto e = qed::nbd::parse_export(optarg, why);
                if (!e) return fail(why);
                specs.push_back(std::move(*e));
                break;
            }
            case opt_dir:
                if (!*optarg) return fail("--dir needs a directory");
                dirs.emplace_back(optarg);
                break;
            case opt_threads:
                if (!parse_unsigned(optarg, 1024, n) || n == 0)
                    return fail(std::string("invalid number of threads '") + optarg + "' (1 to 1024)");
                o.threads = static_cast<unsigned>(n);
                break;
            case 'e':
                if (!parse_unsigned(optarg, std::numeric_limits<unsigned>::max(), n))
                    return fail(std::string("invalid number of shared clients '") + optarg + "'");
                o.shared = static_cast<unsigned>(n);
                break;
            case 't':
                o.persistent = true;
                break;
            case 'n':
                o.direct = true;
                break;
            case opt_cache: {
                const std::string m = optarg;
                if (m == "none") {
                    o.direct = true;
                    o.writethrough = false;
                } else if (m == "writeback") {
                    o.direct = false;
                    o.writethrough = false;
                } else if (m == "writethrough") {
                    o.direct = false;
                    o.writethrough = true;
                } else if (m == "directsync") {
                    o.direct = true;
                    o.writethrough = true;
                } else {
                    return fail("invalid cache mode '" + m + "' (none, writeback, writethrough, directsync)");
                }
                break;
            }
            case opt_discard: {
                const std::string m = optarg;
                if (m == "unmap" || m == "on")
                    o.discard = true;
                else if (m == "ignore" || m == "off")
                    o.discard = false;
                else
                    return fail("invalid discard mode '" + m + "' (ignore, unmap)");
                break;
            }
            case opt_aio: {
                const std::string m = optarg;
                if (m == "io_uring")
                    o.backend = qed::file_backend::io_uring;
                else if (m == "threads")
                    o.backend = qed::file_backend::threads;
                else
                    return fail("invalid aio mode '" + m + "' (io_uring or threads)");
                break;
            }
            case opt_allow_backing_dir:
                o.allowed_backing_dir = optarg;
                break;
            case opt_allow_remote_backing:
                o.allow_remote_backing = true;
                break;
            case opt_pid_file:
                o.pid_file = optarg;
                break;
            case opt_fork:
                fork_mode = true;
                break;
            case opt_handshake_limit:
                if (!parse_unsigned(optarg, 86400, n) || n == 0)
                    return fail(std::string("invalid handshake limit '") + optarg + "'");
                o.lim.handshake_timeout = std::chrono::seconds(n);
                break;
            case opt_object: {
                std::string why;
                auto ob = qed::nbd::parse_object(optarg, why);
                if (!ob) return fail(why);
                objects.push_back(std::move(*ob));
                break;
            }
            case opt_tls_creds:
                if (!tls_creds.empty()) return fail("--tls-creds given twice");
                tls_creds = optarg;
                break;
            case opt_tls_authz:
                tls_authz.emplace_back(optarg);
                break;
            case opt_memory_limit:
            case opt_connection_memory_limit: {
                std::uint64_t bytes = 0;
                const bool global = c == opt_memory_limit;
                const char* name = global ? "--memory-limit" : "--connection-memory-limit";
                if (!parse_size(optarg, bytes))
                    return fail(std::string("invalid size for ") + name + " '" + optarg + "'");
                if (bytes < o.lim.max_payload)
                    return fail(std::string(name) + " must be at least 32M (the largest request)");
                if (global)
                    o.memory_limit = static_cast<std::size_t>(bytes);
                else
                    o.lim.max_buffered = static_cast<std::size_t>(bytes);
                break;
            }
            case 'A':
                break;  // qemu:allocation-depth is always offered
            case opt_detect_zeroes: {
                const std::string m = optarg;
                if (m == "off")
                    o.zeroes = qed::nbd::detect_zeroes::off;
                else if (m == "on")
                    o.zeroes = qed::nbd::detect_zeroes::on;
                else if (m == "unmap")
                    o.zeroes = qed::nbd::detect_zeroes::unmap;
                else
                    return fail("invalid --detect-zeroes mode '" + m + "' (off, on, unmap)");
                break;
            }
            case 's':
                o.snapshot = true;
                break;
            case 'L':
                list_mode = true;
                break;
            case 'c':
                return fail(std::string("-c/--connect (attaching a kernel /dev/nbd device) is not supported: serve the "
                                        "image with qed-nbd and attach it with nbd-client, e.g. "
                                        "'nbd-client 127.0.0.1 10809 ") +
                            optarg + "'");
            case 'd':
                return fail(std::string("-d/--disconnect (detaching a kernel /dev/nbd device) is not supported: use "
                                        "'nbd-client -d ") +
                            optarg + "'");
            case 'v':
                ++o.verbose;
                break;
            case 'h':
                usage(std::cout);
                return 0;
            case 'V':
                std::cout << "qed-nbd " QED_VERSION
                             "\n"
                             "Written by the qed developers.\n\n"
                             "Copyright (c) 2026 the qed developers\n"
                             "This is free software; see the source for copying conditions.  There is NO\n"
                             "warranty; not even for MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.\n";
                return 0;
            case ':':
                return fail(std::string("option '") + argv[optind - 1] + "' needs an argument");
            default:
                return fail(std::string("unknown option '") + argv[optind - 1] + "'");
        }
    }
    // As qemu-nbd: unmap applies only where discards are honoured.
    if (o.zeroes == qed::nbd::detect_zeroes::unmap && !o.discard)
        return fail("--detect-zeroes=unmap is not allowed without --discard=unmap");
    const bool several = !specs.empty() || !dirs.empty();
    if (list_mode) {
        // qemu-nbd -L: be a client of the server at -k or -b/-p.
        if (several)
            return fail("-L lists the exports of a running server: it cannot be combined with --export or --dir");
        if (optind != argc) return fail("-L takes no image file");
        if (tcp_given && !o.socket_path.empty()) return fail("--socket cannot be combined with --port or --bind");
        if (!tls_creds.empty()) return fail("-L over TLS is not supported; use nbdinfo --list with an nbds:// URI");
        return qed::nbd::list_exports(o.bind_address, o.port, o.socket_path);
    }
    if (several) {
        if (optind != argc)
            return fail(std::string("an image file ('") + argv[optind] +
                        "') cannot be combined with --export or --dir: give it as --export name=NAME,file=FILE");
        if (!single_only.empty())
            return fail(single_only +
                        " cannot be combined with --export or --dir: give name=, description= and format= in "
                        "each --export (--dir serves QED images by their file names)");
        o.named_exports = true;
        for (auto& e : specs) {
            // -r is every export's default; an export may not undo it.
            if (read_only && e.read_only == false)
                return fail("--export name=" + e.o.name + ": readonly=off contradicts -r/--read-only");
            e.o.read_only = e.read_only.value_or(read_only);
            o.exports.push_back(std::move(e.o));
        }
        for (const auto& d : dirs) {
            std::string why;
            if (!qed::nbd::scan_export_dir(
                    d, read_only, o.exports, [](const std::string& line) { std::cerr << "qed-nbd: " << line << "\n"; },
                    why))
                return fail(why);
        }
        for (std::size_t i = 0; i < o.exports.size(); ++i)
            for (std::size_t j = 0; j < i; ++j)
                if (o.exports[i].name == o.exports[j].name)
                    return fail("duplicate export name '" + o.exports[i].name + "' (files '" + o.exports[j].path +
                                "' and '" + o.exports[i].path + "')");
    } else {
        if (optind + 1 != argc) return fail(optind >= argc ? "no image file given" : "more than one image file given");
        qed::nbd::export_options e;
        e.name = export_name;
        e.path = argv[optind];
        e.format = format;
        e.read_only = read_only;
        e.description = description;
        o.exports.push_back(std::move(e));
    }
    if (tcp_given && !o.socket_path.empty()) return fail("--socket cannot be combined with --port or --bind");
    if (std::string why; resolve_tls(objects, tls_creds, tls_authz, o, why)) return fail(why);
    for (const auto& e : o.exports) {
        const std::string which = several ? "export '" + e.name.substr(0, 64) + "': " : std::string();
        if (e.name.size() > qed::nbd::max_string) return fail(which + "export name longer than 4096 bytes");
        if (e.description.size() > qed::nbd::max_string) return fail(which + "description longer than 4096 bytes");
    }
    return -1;
}

/// --fork: the parent waits until the child listens (or fails) and exits
/// with the matching status. Returns in the child with the pipe to signal on.
int fork_server(int& ready_fd) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) {
        std::cerr << "qed-nbd: pipe: " << std::strerror(errno) << "\n";
        std::exit(1);
    }
    const pid_t pid = ::fork();
    if (pid < 0) {
        std::cerr << "qed-nbd: fork: " << std::strerror(errno) << "\n";
        std::exit(1);
    }
    if (pid > 0) {
        ::close(fds[1]);
        char c = 0;
        ssize_t got;
        do got = ::read(fds[0], &c, 1);
        while (got < 0 && errno == EINTR);
        if (got == 1) std::exit(0);
        int status = 0;
        ::waitpid(pid, &status, 0);
        std::exit(WIFEXITED(status) && WEXITSTATUS(status) ? WEXITSTATUS(status) : 1);
    }
    ::close(fds[0]);
    ::setsid();
    ready_fd = fds[1];
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    qed::nbd::server_options options;
    options.threads = std::max(1u, std::thread::hardware_concurrency());
    bool fork_mode = false;
    if (const int rc = parse(argc, argv, options, fork_mode); rc >= 0) return rc;

    // A client that goes away must not kill the server with SIGPIPE.
    std::signal(SIGPIPE, SIG_IGN);

    int ready_fd = -1;
    if (fork_mode) {
        fork_server(ready_fd);
        const int verbose = options.verbose;
        options.ready = [ready_fd, verbose] {
            const char c = 1;
            [[maybe_unused]] const ssize_t w = ::write(ready_fd, &c, 1);
            ::close(ready_fd);
            const int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
            if (null >= 0) {
                ::dup2(null, STDIN_FILENO);
                ::dup2(null, STDOUT_FILENO);
                if (!verbose) ::dup2(null, STDERR_FILENO);
                ::close(null);
            }
        };
    }

    boost::asio::io_context ioc(1);
    qed::nbd::server srv(ioc, std::move(options));
    try {
        srv.start();
        ioc.run();
    } catch (const std::exception& e) {
        // Nothing is expected to throw; if something does, the image keeps
        // its NEED_CHECK bit and is checked when next opened read-write.
        std::cerr << "qed-nbd: fatal: " << e.what() << std::endl;
        return 1;
    }
    return srv.exit_code();
}
