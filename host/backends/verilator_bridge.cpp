// zippix Verilator bridge: the link core's byte streams on a TCP socket (loopback only).
//
// Usage: Vzippix_top [--port N]   (0 = any free port; the chosen port is printed as "PORT <n>")
// One client at a time; the simulation ends when the client disconnects.
// The clock runs while there is input, output, or the design reports `busy`; when everything is
// idle the bridge sleeps in poll() until the host sends more bytes, so an idle simulation costs no CPU.
// The cycle count is printed on exit ("CYCLES <n>").
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <vector>

#include "Vzippix_top.h"
#include "verilated.h"

// Verilator escapes the "__" in Amaranth's flattened port names as "___05F".
#define RX_VALID rx___05Fvalid
#define RX_READY rx___05Fready
#define RX_PAYLOAD rx___05Fpayload
#define TX_VALID tx___05Fvalid
#define TX_READY tx___05Fready
#define TX_PAYLOAD tx___05Fpayload

static int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    if (bind(fd, (sockaddr *)&addr, sizeof addr) != 0 || listen(fd, 1) != 0) {
        std::perror("zippix bridge: bind/listen");
        std::exit(2);
    }
    socklen_t len = sizeof addr;
    getsockname(fd, (sockaddr *)&addr, &len);
    std::printf("PORT %d\n", ntohs(addr.sin_port));
    std::fflush(stdout);
    return fd;
}

int main(int argc, char **argv) {
    int port = 0;
    for (int i = 1; i + 1 < argc; i++)
        if (!std::strcmp(argv[i], "--port")) port = std::atoi(argv[i + 1]);
    Verilated::commandArgs(1, argv);

    int server = listen_on(port);
    int client = accept(server, nullptr, nullptr);
    if (client < 0) { std::perror("zippix bridge: accept"); return 2; }
    int one = 1;
    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

    auto *top = new Vzippix_top;
    top->clk = 0;
    top->rst = 1;
    top->RX_VALID = 0;
    top->TX_READY = 1;
    for (int i = 0; i < 4; i++) { top->clk = !top->clk; top->eval(); }
    top->rst = 0;

    std::deque<unsigned char> in;
    std::vector<unsigned char> out;
    unsigned char buf[65536];
    unsigned long long cycles = 0, quiet = 0, since_tx = 0;
    bool open = true;
    while (open) {
        bool idle = in.empty() && quiet > 4;
        if (!out.empty() && (idle || since_tx > 8 || out.size() >= 4096)) {
            size_t sent = 0;
            while (sent < out.size()) {
                ssize_t n = send(client, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
                if (n <= 0) { open = false; break; }
                sent += n;
            }
            out.clear();
        }
        if (idle || (cycles & 1023) == 0) {
            pollfd p{client, POLLIN, 0};
            int ready = poll(&p, 1, idle ? 200 : 0);
            if (ready > 0) {
                ssize_t n = recv(client, buf, sizeof buf, 0);
                if (n <= 0) break;
                in.insert(in.end(), buf, buf + n);
                quiet = 0;
            } else if (idle) {
                continue;  // keep sleeping; the design has nothing to do
            }
        }
        top->RX_VALID = !in.empty();
        if (!in.empty()) top->RX_PAYLOAD = in.front();
        top->clk = 0;
        top->eval();
        bool took = top->RX_VALID && top->RX_READY;
        bool gave = top->TX_VALID;
        unsigned char byte = top->TX_PAYLOAD;
        bool busy = top->busy;
        top->clk = 1;
        top->eval();
        cycles++;
        if (took) in.pop_front();
        if (gave) out.push_back(byte);
        since_tx = gave ? 0 : since_tx + 1;
        quiet = (in.empty() && !busy && !gave) ? quiet + 1 : 0;
    }
    top->final();
    delete top;
    close(client);
    close(server);
    std::fprintf(stderr, "CYCLES %llu\n", cycles);
    return 0;
}
