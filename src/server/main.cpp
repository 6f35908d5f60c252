// SPDX-License-Identifier: BSL-1.0
// qed-nbd: serve a QED (or raw) image over NBD, or several at once, each
// under its own export name (--export, --dir). The single-image command
// line follows qemu-nbd's so that one can stand in for the other in scripts.
#include <fcntl.h>
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

#include "cli/args.hpp"
#include "cli/size_arg.hpp"
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

bool parse_unsigned(const std::string& s, unsigned long max, unsigned long& out) {
    if (s.empty() || s[0] == '-') return false;
    char* end = nullptr;
    errno = 0;
    const unsigned long v = std::strtoul(s.c_str(), &end, 10);
    if (errno || *end || v > max) return false;
    out = v;
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

/// What the options set, before the checks that combine them.
struct command_line {
    explicit command_line(qed::nbd::server_options& options) : o(options) {}
    qed::nbd::server_options& o;
    bool tcp_given = false;
    bool list_mode = false;
    bool fork_mode = false;
    bool read_only = false;
    std::optional<int> exit_now;  ///< --help, --version
    std::vector<qed::nbd::tls_object> objects;
    std::string tls_creds;
    std::vector<std::string> tls_authz;
    std::string single_only;  ///< the first single-image option given (--export/--dir replace them)
    std::vector<qed::nbd::export_spec> specs;
    std::vector<std::string> dirs;
    std::optional<qed::image_format> format;
    std::string export_name;
    std::string description;

    void single(const char* name) {
        if (single_only.empty()) single_only = name;
    }
};

/// An option: its spelling for the parser, and what it does to the command
/// line (an empty string, or one line saying what is wrong with `value`).
struct option_def {
    qed::cli::option_spec spec;
    std::string (*apply)(command_line& c, const std::string& value);
};

/// The choice of `value` among `names` (index), or nullopt.
std::optional<std::size_t> choice(const std::string& value, std::initializer_list<const char*> names) {
    std::size_t i = 0;
    for (const char* n : names) {
        if (value == n) return i;
        ++i;
    }
    return std::nullopt;
}

std::string limit_option(command_line& c, const std::string& v, bool global) {
    const char* name = global ? "--memory-limit" : "--connection-memory-limit";
    std::string why;
    const auto bytes = qed::cli::parse_size(v, why);
    if (!bytes) return std::string("invalid size for ") + name + " '" + v + "'";
    if (*bytes < c.o.lim.max_payload) return std::string(name) + " must be at least 32M (the largest request)";
    (global ? c.o.memory_limit : c.o.lim.max_buffered) = static_cast<std::size_t>(*bytes);
    return {};
}

const option_def option_table[] = {
    {{'p', "port", true},
     [](command_line& c, const std::string& v) -> std::string {
         unsigned long n = 0;
         if (!parse_unsigned(v, 65535, n) || n == 0) return "invalid port '" + v + "'";
         c.o.port = static_cast<std::uint16_t>(n);
         c.tcp_given = true;
         return {};
     }},
    {{'b', "bind", true},
     [](command_line& c, const std::string& v) -> std::string {
         c.o.bind_address = v;
         c.tcp_given = true;
         return {};
     }},
    {{'k', "socket", true},
     [](command_line& c, const std::string& v) -> std::string { return c.o.socket_path = v, ""; }},
    {{'x', "export-name", true},
     [](command_line& c, const std::string& v) -> std::string {
         c.export_name = v;
         c.single("-x/--export-name");
         return {};
     }},
    {{'D', "description", true},
     [](command_line& c, const std::string& v) -> std::string {
         c.description = v;
         c.single("-D/--description");
         return {};
     }},
    {{'f', "format", true},
     [](command_line& c, const std::string& v) -> std::string {
         c.format = qed::parse_format(v);
         if (!c.format) return "unknown format '" + v + "' (qed or raw)";
         c.single("-f/--format");
         return {};
     }},
    {{'r', "read-only", false},
     [](command_line& c, const std::string&) -> std::string { return c.read_only = true, ""; }},
    {{0, "export", true},
     [](command_line& c, const std::string& v) -> std::string {
         std::string why;
         auto e = qed::nbd::parse_export(v, why);
         if (!e) return why;
         c.specs.push_back(std::move(*e));
         return {};
     }},
    {{0, "dir", true},
     [](command_line& c, const std::string& v) -> std::string {
         if (v.empty()) return "--dir needs a directory";
         c.dirs.push_back(v);
         return {};
     }},
    {{0, "threads", true},
     [](command_line& c, const std::string& v) -> std::string {
         unsigned long n = 0;
         if (!parse_unsigned(v, 1024, n) || n == 0) return "invalid number of threads '" + v + "' (1 to 1024)";
         c.o.threads = static_cast<unsigned>(n);
         return {};
     }},
    {{'e', "shared", true},
     [](command_line& c, const std::string& v) -> std::string {
         unsigned long n = 0;
         if (!parse_unsigned(v, std::numeric_limits<unsigned>::max(), n))
             return "invalid number of shared clients '" + v + "'";
         c.o.shared = static_cast<unsigned>(n);
         return {};
     }},
    {{'t', "persistent", false},
     [](command_line& c, const std::string&) -> std::string { return c.o.persistent = true, ""; }},
    {{'n', "nocache", false}, [](command_line& c, const std::string&) -> std::string { return c.o.direct = true, ""; }},
    {{0, "cache", true},
     [](command_line& c, const std::string& v) -> std::string {
         // none, writeback, writethrough, directsync: O_DIRECT and/or a flush after every write
         const auto m = choice(v, {"none", "writeback", "writethrough", "directsync"});
         if (!m) return "invalid cache mode '" + v + "' (none, writeback, writethrough, directsync)";
         c.o.direct = *m == 0 || *m == 3;
         c.o.writethrough = *m >= 2;
         return {};
     }},
    {{0, "discard", true},
     [](command_line& c, const std::string& v) -> std::string {
         const auto m = choice(v, {"ignore", "off", "unmap", "on"});
         if (!m) return "invalid discard mode '" + v + "' (ignore, unmap)";
         c.o.discard = *m >= 2;
         return {};
     }},
    {{0, "aio", true},
     [](command_line& c, const std::string& v) -> std::string {
         const auto m = choice(v, {"io_uring", "threads"});
         if (!m) return "invalid aio mode '" + v + "' (io_uring or threads)";
         c.o.backend = *m == 0 ? qed::file_backend::io_uring : qed::file_backend::threads;
         return {};
     }},
    {{0, "allow-backing-dir", true},
     [](command_line& c, const std::string& v) -> std::string { return c.o.allowed_backing_dir = v, ""; }},
    {{0, "allow-remote-backing", false},
     [](command_line& c, const std::string&) -> std::string { return c.o.allow_remote_backing = true, ""; }},
    {{0, "pid-file", true}, [](command_line& c, const std::string& v) -> std::string { return c.o.pid_file = v, ""; }},
    {{0, "fork", false}, [](command_line& c, const std::string&) -> std::string { return c.fork_mode = true, ""; }},
    {{0, "handshake-limit", true},
     [](command_line& c, const std::string& v) -> std::string {
         unsigned long n = 0;
         if (!parse_unsigned(v, 86400, n) || n == 0) return "invalid handshake limit '" + v + "'";
         c.o.lim.handshake_timeout = std::chrono::seconds(n);
         return {};
     }},
    {{0, "object", true},
     [](command_line& c, const std::string& v) -> std::string {
         std::string why;
         auto ob = qed::nbd::parse_object(v, why);
         if (!ob) return why;
         c.objects.push_back(std::move(*ob));
         return {};
     }},
    {{0, "tls-creds", true},
     [](command_line& c, const std::string& v) -> std::string {
         if (!c.tls_creds.empty()) return "--tls-creds given twice";
         c.tls_creds = v;
         return {};
     }},
    {{0, "tls-authz", true},
     [](command_line& c, const std::string& v) -> std::string { return c.tls_authz.push_back(v), ""; }},
    {{0, "memory-limit", true}, [](command_line& c, const std::string& v) { return limit_option(c, v, true); }},
    {{0, "connection-memory-limit", true},
     [](command_line& c, const std::string& v) { return limit_option(c, v, false); }},
    // qemu:allocation-depth is always offered
    {{'A', "allocation-depth", false}, [](command_line&, const std::string&) -> std::string { return {}; }},
    {{0, "detect-zeroes", true},
     [](command_line& c, const std::string& v) -> std::
                                                   string {
                                                       const auto m = choice(v, {"off", "on", "unmap"});
                                                       if (!m)
                                                           return "invalid --detect-zeroes mode '" + v +
                                                                  "' (off, on, unmap)";
                                                       c.o.zeroes = *m == 0   ? qed::nbd::detect_zeroes::off
                                                                    : *m == 1 ? qed::nbd::detect_zeroes::on
                                                                              : qed::nbd::detect_zeroes::unmap;
                                                       return {};
                                                   }},
    {{'s', "snapshot", false},
     [](command_line& c, const std::string&) -> std::string { return c.o.snapshot = true, ""; }},
    {{'L', "list", false}, [](command_line& c, const std::string&) -> std::string { return c.list_mode = true, ""; }},
    {{'c', "connect", true},
     [](command_line&,
        const std::string& v) -> std::
                                  string {
                                      return "-c/--connect (attaching a kernel /dev/nbd device) is not supported: "
                                             "serve the image with qed-nbd "
                                             "and attach it with nbd-client, e.g. 'nbd-client 127.0.0.1 10809 " +
                                             v + "'";
                                  }},
    {{'d', "disconnect", true},
     [](command_line&, const std::string& v)
         -> std::
             string {
                 return "-d/--disconnect (detaching a kernel /dev/nbd device) is not supported: use 'nbd-client -d " +
                        v + "'";
             }},
    {{'v', "verbose", false}, [](command_line& c, const std::string&) -> std::string { return ++c.o.verbose, ""; }},
    {{'h', "help", false},
     [](command_line& c, const std::string&) -> std::
                                                 string {
                                                     usage(std::cout);
                                                     c.exit_now = 0;
                                                     return {};
                                                 }},
    {{'V', "version", false},
     [](command_line& c, const std::string&)
         -> std::
             string {
                 std::cout << "qed-nbd " QED_VERSION
                              "\n"
                              "Written by the qed developers.\n\n"
                              "Copyright (c) 2026 the qed developers\n"
                              "This is free software; see the source for copying conditions.  There is NO\n"
                              "warranty; not even for MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.\n";
                 c.exit_now = 0;
                 return {};
             }},
};

/// --export and --dir: the exports, each checked against the others and -r.
std::string several_exports(command_line& c, const std::vector<std::string>& files) {
    if (!files.empty())
        return "an image file ('" + files[0] +
               "') cannot be combined with --export or --dir: give it as --export name=NAME,file=FILE";
    if (!c.single_only.empty())
        return c.single_only +
               " cannot be combined with --export or --dir: give name=, description= and format= in each --export "
               "(--dir serves QED images by their file names)";
    auto& exports = c.o.exports;
    c.o.named_exports = true;
    for (auto& e : c.specs) {
        // -r is every export's default; an export may not undo it.
        if (c.read_only && e.read_only == false)
            return "--export name=" + e.o.name + ": readonly=off contradicts -r/--read-only";
        e.o.read_only = e.read_only.value_or(c.read_only);
        exports.push_back(std::move(e.o));
    }
    for (const auto& d : c.dirs) {
        std::string why;
        if (!qed::nbd::scan_export_dir(
                d, c.read_only, exports, [](const std::string& line) { std::cerr << "qed-nbd: " << line << "\n"; },
                why))
            return why;
    }
    for (std::size_t i = 0; i < exports.size(); ++i)
        for (std::size_t j = 0; j < i; ++j)
            if (exports[i].name == exports[j].name)
                return "duplicate export name '" + exports[i].name + "' (files '" + exports[j].path + "' and '" +
                       exports[i].path + "')";
    return {};
}

/// Parses argv into `o`; returns -1 to go on, or an exit code.
int parse(int argc, char** argv, qed::nbd::server_options& o, bool& fork_mode) {
    auto fail = [](const std::string& msg) {
        std::cerr << "qed-nbd: " << msg << "\nTry 'qed-nbd --help' for more information.\n";
        return 1;
    };
    std::vector<qed::cli::option_spec> spec;
    for (const auto& d : option_table) spec.push_back(d.spec);
    std::string error;
    const auto args = qed::cli::parse_args(std::vector<std::string>(argv + 1, argv + argc), spec, error);
    if (!args) return fail(error);
    command_line c(o);
    for (const auto& opt : args->options) {
        for (const auto& d : option_table) {
            const bool match =
                d.spec.long_name.empty() ? opt.name == std::string(1, d.spec.short_name) : opt.name == d.spec.long_name;
            if (!match) continue;
            if (std::string why = d.apply(c, opt.value); !why.empty()) return fail(why);
            if (c.exit_now) return *c.exit_now;
            break;
        }
    }
    fork_mode = c.fork_mode;
    const std::vector<std::string>& files = args->positional;
    // As qemu-nbd: unmap applies only where discards are honoured.
    if (o.zeroes == qed::nbd::detect_zeroes::unmap && !o.discard)
        return fail("--detect-zeroes=unmap is not allowed without --discard=unmap");
    const bool several = !c.specs.empty() || !c.dirs.empty();
    if (c.tcp_given && !o.socket_path.empty()) return fail("--socket cannot be combined with --port or --bind");
    if (c.list_mode) {
        // qemu-nbd -L: be a client of the server at -k or -b/-p.
        if (several)
            return fail("-L lists the exports of a running server: it cannot be combined with --export or --dir");
        if (!files.empty()) return fail("-L takes no image file");
        if (!c.tls_creds.empty()) return fail("-L over TLS is not supported; use nbdinfo --list with an nbds:// URI");
        return qed::nbd::list_exports(o.bind_address, o.port, o.socket_path);
    }
    if (several) {
        if (std::string why = several_exports(c, files); !why.empty()) return fail(why);
    } else {
        if (files.size() != 1) return fail(files.empty() ? "no image file given" : "more than one image file given");
        o.exports.push_back({c.export_name, files[0], c.format, c.read_only, c.description});
    }
    if (std::string why; resolve_tls(c.objects, c.tls_creds, c.tls_authz, o, why)) return fail(why);
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
