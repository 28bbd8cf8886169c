/* holdload: opens N HTTP/1.1 connections to one address, sends one GET on
 * each, and records when each answer arrived. The benchmarks' load tool for
 * held requests (wrk measures throughput; this measures a burst).
 *
 *   holdload --port P [--host 127.0.0.1] [--path /] [--conns N]
 *            [--batch 500] [--pause-ms 5]   open N in batches of B, P ms apart
 *            [--connect-first]              connect all N, then send all requests at once
 *            [--close]                      ask for "Connection: close"
 *            [--hold S]                     keep the connections S seconds, then close (no waiting for answers)
 *            [--timeout S]                  give up waiting for answers after S seconds (default 60)
 *            [--expect TEXT]                an answer counts as the service's when its body contains TEXT
 *            [--times FILE]                 one line per request: "<monotonic ns of the answer> <status> <ok>"
 *
 * Progress goes to stdout, one line each, flushed:
 *   connected <n> <monotonic ns>      every connection is established (--connect-first)
 *   sent <n> <monotonic ns>           every request has been written
 *   done {json}                       the summary: answers by status, the service's answers, errors
 * Times are CLOCK_MONOTONIC, the clock of Python's time.monotonic_ns(). Each
 * request is a plain HTTP/1.1 GET (keep-alive; "Connection: close" with
 * --close); an answer is complete when its headers and Content-Length bytes of
 * body have arrived, and the connection is closed then. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "loadtool.h"

enum { S_CONNECTING, S_CONNECTED, S_SENT, S_DONE, S_FAILED };

struct conn {
  int fd;
  int state;
  int status;
  int ok;
  size_t got;
  int64_t done_ns;
  char buf[2048];
};

static const char* opt_host = "127.0.0.1";
static int opt_port = 0;
static const char* opt_path = "/";
static int opt_conns = 100;
static int opt_batch = 500;
static int opt_pause_ms = 5;
static int opt_connect_first = 0;
static int opt_close = 0;
static double opt_hold = 0;
static double opt_timeout = 60;
static const char* opt_expect = NULL;
static const char* opt_times = NULL;

static struct conn* conns;
static int epfd;
static char request[512];
static size_t request_len;
static int n_sent, n_connected, n_finished, n_errors;

static void fail(struct conn* c) {
  if (c->state == S_DONE || c->state == S_FAILED) return;
  c->state = S_FAILED;
  c->done_ns = now_ns();
  ++n_errors;
  ++n_finished;
  epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  c->fd = -1;
}

static void send_request(struct conn* c) {
  ssize_t n = send(c->fd, request, request_len, MSG_NOSIGNAL);
  if (n != (ssize_t)request_len) {
    fail(c);
    return;
  }
  c->state = S_SENT;
  ++n_sent;
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
  if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0) fail(c);
}

/* Parses what has arrived; marks the answer complete when it is. */
static void check_answer(struct conn* c) {
  c->buf[c->got] = '\0';
  char* end = strstr(c->buf, "\r\n\r\n");
  if (end == NULL) return;
  size_t header_len = (size_t)(end - c->buf) + 4;
  long length = -1;
  for (char* p = c->buf; p < end; ++p) {
    if ((p == c->buf || p[-1] == '\n') && strncasecmp(p, "Content-Length:", 15) == 0) length = strtol(p + 15, NULL, 10);
  }
  if (length < 0) return; /* wait for EOF */
  if (c->got < header_len + (size_t)length) return;
  c->done_ns = now_ns();
  c->status = atoi(c->buf + 9);
  c->ok = opt_expect == NULL || strstr(c->buf + header_len, opt_expect) != NULL;
  c->state = S_DONE;
  ++n_finished;
  epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  c->fd = -1;
}

static void on_readable(struct conn* c) {
  for (;;) {
    if (c->got >= sizeof c->buf - 1) { /* larger than any answer expected here */
      fail(c);
      return;
    }
    ssize_t n = recv(c->fd, c->buf + c->got, sizeof c->buf - 1 - c->got, 0);
    if (n > 0) {
      c->got += (size_t)n;
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    /* EOF or error: complete if the headers are there (no Content-Length). */
    c->buf[c->got] = '\0';
    if (n == 0 && strstr(c->buf, "\r\n\r\n") != NULL) {
      c->done_ns = now_ns();
      c->status = atoi(c->buf + 9);
      char* body = strstr(c->buf, "\r\n\r\n") + 4;
      c->ok = opt_expect == NULL || strstr(body, opt_expect) != NULL;
      c->state = S_DONE;
      ++n_finished;
      epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
      close(c->fd);
      c->fd = -1;
    } else {
      fail(c);
    }
    return;
  }
  check_answer(c);
}

static void on_connected(struct conn* c) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
    fail(c);
    return;
  }
  c->state = S_CONNECTED;
  ++n_connected;
  if (opt_connect_first) {
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    return;
  }
  send_request(c);
}

static void open_conn(struct conn* c, const struct sockaddr_in* addr) {
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0) die("socket");
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c->state = S_CONNECTING;
  struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) die("epoll_ctl");
  if (connect(c->fd, (const struct sockaddr*)addr, sizeof *addr) != 0 && errno != EINPROGRESS) fail(c);
}

static void poll_events(int timeout_ms) {
  static struct epoll_event events[1024];
  int n = epoll_wait(epfd, events, 1024, timeout_ms);
  if (n < 0 && errno != EINTR) die("epoll_wait");
  for (int i = 0; i < n; ++i) {
    struct conn* c = events[i].data.ptr;
    if (c->fd < 0) continue;
    if (c->state == S_CONNECTING) {
      on_connected(c);
    } else if (c->state == S_CONNECTED) {
      /* --connect-first: the server should not speak first */
      if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) fail(c);
    } else if (c->state == S_SENT) {
      on_readable(c);
    }
  }
}

static void usage(void) {
  fprintf(stderr,
          "usage: holdload --port P [--host H] [--path /] [--conns N] [--batch B] [--pause-ms MS]\n"
          "                [--connect-first] [--close] [--hold S] [--timeout S] [--expect TEXT] [--times FILE]\n");
  exit(2);
}

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--connect-first") == 0) {
      opt_connect_first = 1;
      continue;
    }
    if (strcmp(a, "--close") == 0) {
      opt_close = 1;
      continue;
    }
    if (v == NULL) usage();
    ++i;
    if (strcmp(a, "--host") == 0)
      opt_host = v;
    else if (strcmp(a, "--port") == 0)
      opt_port = atoi(v);
    else if (strcmp(a, "--path") == 0)
      opt_path = v;
    else if (strcmp(a, "--conns") == 0)
      opt_conns = atoi(v);
    else if (strcmp(a, "--batch") == 0)
      opt_batch = atoi(v);
    else if (strcmp(a, "--pause-ms") == 0)
      opt_pause_ms = atoi(v);
    else if (strcmp(a, "--hold") == 0)
      opt_hold = atof(v);
    else if (strcmp(a, "--timeout") == 0)
      opt_timeout = atof(v);
    else if (strcmp(a, "--expect") == 0)
      opt_expect = v;
    else if (strcmp(a, "--times") == 0)
      opt_times = v;
    else
      usage();
  }
  if (opt_port <= 0 || opt_conns <= 0 || opt_batch <= 0) usage();

  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rlim_t want = (rlim_t)opt_conns + 64;
  if (rl.rlim_cur < want) {
    if (rl.rlim_max < want) rl.rlim_max = want; /* only root may raise it */
    rl.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) die("setrlimit(RLIMIT_NOFILE): raise `ulimit -n`");
  }

  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt_port)};
  if (inet_pton(AF_INET, opt_host, &addr.sin_addr) != 1) usage();
  request_len = (size_t)snprintf(request, sizeof request,
                                 "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: holdload\r\nAccept: */*\r\n%s\r\n",
                                 opt_path, opt_host, opt_port, opt_close ? "Connection: close\r\n" : "");

  conns = calloc((size_t)opt_conns, sizeof *conns);
  if (conns == NULL) die("calloc");
  epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) die("epoll_create1");

  int opened = 0;
  while (opened < opt_conns) {
    int until = opened + opt_batch < opt_conns ? opened + opt_batch : opt_conns;
    for (; opened < until; ++opened)
      open_conn(&conns[opened], &addr);
    int64_t pause_end = now_ns() + (int64_t)opt_pause_ms * 1000000;
    do
      poll_events(opt_pause_ms);
    while (now_ns() < pause_end);
  }
  int64_t deadline = now_ns() + (int64_t)(opt_timeout * 1e9);
  if (opt_connect_first) {
    while (n_connected + n_errors < opt_conns && now_ns() < deadline)
      poll_events(10);
    printf("connected %d %lld\n", n_connected, (long long)now_ns());
    fflush(stdout);
    for (int i = 0; i < opt_conns; ++i)
      if (conns[i].state == S_CONNECTED) send_request(&conns[i]);
  } else {
    while (n_sent + n_errors < opt_conns && now_ns() < deadline)
      poll_events(10);
  }
  int64_t sent_ns = now_ns();
  printf("sent %d %lld\n", n_sent, (long long)sent_ns);
  fflush(stdout);

  if (opt_hold > 0) {
    int64_t hold_end = now_ns() + (int64_t)(opt_hold * 1e9);
    while (now_ns() < hold_end && n_finished < opt_conns)
      poll_events(50);
  } else {
    while (n_finished < opt_conns && now_ns() < deadline)
      poll_events(100);
  }

  int answered = 0, service = 0, by_status[6] = {0};
  int64_t first = 0, last = 0;
  FILE* times = opt_times ? fopen(opt_times, "w") : NULL;
  if (opt_times && times == NULL) die(opt_times);
  for (int i = 0; i < opt_conns; ++i) {
    struct conn* c = &conns[i];
    if (c->state == S_DONE) {
      ++answered;
      if (c->status >= 100 && c->status < 600) ++by_status[c->status / 100];
      if (c->status == 200 && c->ok) ++service;
      if (first == 0 || c->done_ns < first) first = c->done_ns;
      if (c->done_ns > last) last = c->done_ns;
      if (times) fprintf(times, "%lld %d %d\n", (long long)c->done_ns, c->status, c->ok);
    } else if (times && c->state == S_FAILED) {
      fprintf(times, "%lld 0 0\n", (long long)c->done_ns);
    }
    if (c->fd >= 0) close(c->fd);
  }
  if (times) fclose(times);
  printf(
      "done {\"conns\":%d,\"sent\":%d,\"answered\":%d,\"service\":%d,\"errors\":%d,"
      "\"2xx\":%d,\"3xx\":%d,\"4xx\":%d,\"5xx\":%d,\"unanswered\":%d,"
      "\"sent_ns\":%lld,\"first_ns\":%lld,\"last_ns\":%lld}\n",
      opt_conns, n_sent, answered, service, n_errors, by_status[2], by_status[3], by_status[4], by_status[5],
      opt_conns - answered - n_errors, (long long)sent_ns, (long long)first, (long long)last);
  return 0;
}
