// zippix Verilator bridge: a design's byte streams on a TCP socket (loopback only).
//
// Usage: Vzippix_top [--port N] [--serve]   (0 = any free port; the chosen port is printed as "PORT <n>")
// One client at a time; the simulation ends when the client disconnects, or with --serve waits for the next
// client with the design's state kept, as a board keeps its state between two programs that open its port.
//
// Two models are built from this file:
//  * the link core (default): bytes go straight into its rx stream and come out of its tx stream;
//  * the board top (-DZIPPIX_UART_DIVISOR=<clock cycles per bit>): the exact design a bitstream holds
//    (UART PHY, FIFO, link, engine) with its rx/tx pins; this file plays the other end of the serial
//    line, an 8N1 UART at the same bit rate in simulated time, so every byte crosses the pins bit by bit.
//
// The clock runs in batches of up to BATCH cycles between socket polls while there is input, output,
// or the design reports `busy`; when everything is idle the bridge sleeps in poll() until the host sends
// more bytes, so an idle simulation costs no CPU. Replies are sent as soon as a frame delimiter leaves the
// design with no further request waiting, or the design goes idle. The cycle count is printed on exit ("CYCLES <n>").
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

static const unsigned long long BATCH = 4096;  // cycles between socket polls while the design works

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

#ifdef ZIPPIX_UART_DIVISOR
// The far end of the serial line: an 8N1 UART clocked by the simulation, ZIPPIX_UART_DIVISOR cycles a bit.
struct LineUart {
    static const int DIV = ZIPPIX_UART_DIVISOR;
    int tx_bit = -1, tx_timer = 0;  // sending: bit 0 = start, 1..8 = data, 9 = stop
    unsigned char tx_byte = 0;
    int rx_bit = -1, rx_timer = 0;  // receiving: -1 = waiting for a start bit
    unsigned char rx_byte = 0;
    bool idle() const { return tx_bit < 0 && rx_bit < 0; }
    // level to drive on the design's rx pin this cycle
    int drive(std::deque<unsigned char> &in) {
        if (tx_bit < 0 && !in.empty()) {
            tx_byte = in.front();
            in.pop_front();
            tx_bit = 0;
            tx_timer = DIV;
        }
        if (tx_bit < 0) return 1;
        int level = tx_bit == 0 ? 0 : tx_bit == 9 ? 1 : (tx_byte >> (tx_bit - 1)) & 1;
        if (--tx_timer == 0) {
            tx_timer = DIV;
            if (++tx_bit == 10) tx_bit = -1;
        }
        return level;
    }
    // sample the design's tx pin; returns true with `byte` set when a frame's stop bit has been seen
    bool sample(int level, unsigned char &byte) {
        if (rx_bit < 0) {
            if (!level) { rx_bit = 0; rx_timer = DIV / 2; }
            return false;
        }
        if (--rx_timer) return false;
        rx_timer = DIV;
        if (rx_bit == 0) {  // middle of the start bit
            if (level) rx_bit = -1;  // a glitch
            else rx_bit = 1;
            return false;
        }
        if (rx_bit <= 8) {
            rx_byte = (rx_byte >> 1) | (level ? 0x80 : 0);
            rx_bit++;
            return false;
        }
        rx_bit = -1;  // middle of the stop bit
        if (!level) return false;  // framing error: dropped, as a real UART would
        byte = rx_byte;
        return true;
    }
};
#endif

int main(int argc, char **argv) {
    int port = 0;
    bool serve = false;
    for (int i = 1; i < argc; i++) {
        if (!std::strcmp(argv[i], "--port") && i + 1 < argc) port = std::atoi(argv[i + 1]);
        if (!std::strcmp(argv[i], "--serve")) serve = true;
    }
    Verilated::commandArgs(1, argv);

    int server = listen_on(port);

    auto *top = new Vzippix_top;
    top->clk = 0;
    top->rst = 1;
#ifdef ZIPPIX_UART_DIVISOR
    LineUart line;
    top->rx = 1;
#else
    top->RX_VALID = 0;
    top->RX_PAYLOAD = 0;
    top->TX_READY = 1;
#endif
    for (int i = 0; i < 4; i++) { top->clk = !top->clk; top->eval(); }
    top->rst = 0;

    std::deque<unsigned char> in;
    std::vector<unsigned char> out;
    unsigned char buf[65536];
    unsigned long long cycles = 0, quiet = 0;
    int client = -1;
    bool open = false;
    for (;;) {
        if (!open) {  // (next) client
            if (client >= 0) {
                close(client);
                if (!serve) break;
            }
            client = accept(server, nullptr, nullptr);
            if (client < 0) { std::perror("zippix bridge: accept"); return 2; }
            int one = 1;
            setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            in.clear();
            out.clear();
            open = true;
        }
        bool idle = in.empty() && quiet > 4;
        if (!out.empty() && idle) {  // the design has finished answering: send what it said
            size_t sent = 0;
            while (sent < out.size()) {
                ssize_t n = send(client, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
                if (n <= 0) { open = false; break; }
                sent += n;
            }
            out.clear();
        }
        if (!open) continue;
        pollfd p{client, POLLIN, 0};
        int ready = poll(&p, 1, idle ? 200 : 0);
        if (ready > 0) {
            ssize_t n = recv(client, buf, sizeof buf, 0);
            if (n <= 0) { open = false; continue; }
            in.insert(in.end(), buf, buf + n);
            quiet = 0;
        } else if (idle) {
            continue;  // keep sleeping; the design has nothing to do
        }
        // a batch of cycles; it ends early when the design goes idle or a frame has fully left it
        bool flush = false;
        for (unsigned long long k = 0; k < BATCH && !flush; k++) {
#ifdef ZIPPIX_UART_DIVISOR
            top->rx = line.drive(in);
            top->clk = 0;
            top->eval();
            bool busy = top->busy;
            top->clk = 1;
            top->eval();
            unsigned char byte;
            bool gave = line.sample(top->tx, byte);
            if (gave) {
                out.push_back(byte);
                flush = byte == 0;
            }
            quiet = (in.empty() && !busy && line.idle()) ? quiet + 1 : 0;
#else
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
            if (took) in.pop_front();
            if (gave) {
                out.push_back(byte);
                flush = byte == 0;
            }
            quiet = (in.empty() && !busy && !gave) ? quiet + 1 : 0;
#endif
            cycles++;
            if (quiet > 4) break;
        }
        // whole replies go out at once when no further request is waiting (several pipelined requests are
        // answered in one send), or when they pile up
        if ((flush && in.empty()) || out.size() >= 4096) {
            size_t sent = 0;
            while (sent < out.size()) {
                ssize_t n = send(client, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
                if (n <= 0) { open = false; break; }
                sent += n;
            }
            out.clear();
        }
    }
    top->final();
    delete top;
    close(server);
    std::fprintf(stderr, "CYCLES %llu\n", cycles);
    return 0;
}
