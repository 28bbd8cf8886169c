/* abload: closed-loop HTTP/1.1 keep-alive load on two targets, A and B, in
 * alternating time slices, so that whatever else the machine does hits both
 * alike. The benchmarks' load tool for A/B throughput and latency.
 *
 *   abload --a PORT[/path] --b PORT[/path] [--conns 32] [--slice-ms 250]
 *          [--seconds 20] [--warmup 1] [--json FILE] [--body FILE] [--cpu-pid PID]
 *
 * With --body, every request is a POST of that file's bytes (Content-Type:
 * application/json) instead of a GET.
 *
 * Each target has its own --conns persistent connections to 127.0.0.1. During
 * a slice only the current target's connections send: each sends a GET,
 * waits for the answer and sends the next, until the slice's time is up; the
 * slice ends when its last answer is in (nothing of one target is in flight
 * while the other one runs). Slices go A B B A A B B A ... so a steady drift
 * favours neither. Per slice: answers and elapsed time; per target: every
 * answer's latency (request written -> answer complete), in a histogram of
 * 1 us buckets. The --warmup seconds run the same way and are not counted.
 *
 * With --cpu-pid (the nginx worker serving both), each slice also has the
 * CPU time that process used during it ("cpu_us", from utime + stime in
 * /proc/PID/stat): nothing of the other target is in flight then, so it is
 * that target's CPU time.
 *
 * Output (stdout and --json): {"slice_ms":..,"conns":..,"slices":[{"t":"A","n":..,"us":..},..],
 *   "A":{"answers":..,"errors":..,"p50_us":..,"p90_us":..,"p99_us":..,"p999_us":..},"B":{..}}
 * An answer that is not a 200 counts as an error. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "loadtool.h"

#define HIST_US 200000 /* 200 ms in 1 us buckets; slower answers go to the last one */

struct target {
  char name;
  int port;
  char path[256];
  char* request;
  size_t request_len;
  uint32_t* hist;
  uint64_t answers, errors, reconnects;
};

struct conn {
  struct target* t;
  int fd;
  int busy;
  int64_t sent_ns;
  size_t got;
  char buf[4096];
};

static int epfd;
static int in_flight;
static int counting;
static uint64_t slice_answers;

/* utime + stime of process `pid` in microseconds (-1 when it cannot be read). */
static int64_t process_cpu_us(int pid) {
  char path[64], text[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE* f = fopen(path, "r");
  if (f == NULL) return -1;
  size_t n = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[n] = '\0';
  /* after "pid (comm) ": state is field 3, utime 14 and stime 15 */
  const char* p = strrchr(text, ')');
  unsigned long long utime = 0, stime = 0;
  if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
    return -1;
  return (int64_t)((utime + stime) * 1000000ULL / (unsigned long long)sysconf(_SC_CLK_TCK));
}

static void conn_open(struct conn* c) {
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->t->port)};
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c->fd < 0) die("socket");
  if (connect(c->fd, (struct sockaddr*)&addr, sizeof addr) != 0) die("connect");
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) die("epoll_ctl");
  c->got = 0;
}

static void conn_reopen(struct conn* c) {
  epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  ++c->t->reconnects;
  conn_open(c);
}

static void conn_send(struct conn* c) {
  c->sent_ns = now_ns();
  c->busy = 1;
  ++in_flight;
  if (send(c->fd, c->t->request, c->t->request_len, MSG_NOSIGNAL) != (ssize_t)c->t->request_len) {
    /* the server closed a keep-alive connection: once more on a new one */
    conn_reopen(c);
    if (send(c->fd, c->t->request, c->t->request_len, MSG_NOSIGNAL) != (ssize_t)c->t->request_len) die("send");
  }
}

/* Returns 1 when an answer is complete (and consumes it). */
static int answer_complete(struct conn* c, int* status) {
  c->buf[c->got] = '\0';
  char* end = strstr(c->buf, "\r\n\r\n");
  if (end == NULL) return 0;
  size_t header_len = (size_t)(end - c->buf) + 4;
  long length = -1;
  for (char* p = c->buf; p < end; ++p) {
    if ((p == c->buf || p[-1] == '\n') && strncasecmp(p, "Content-Length:", 15) == 0) length = strtol(p + 15, NULL, 10);
  }
  if (length < 0) {
    fprintf(stderr, "abload: an answer without Content-Length\n");
    exit(2);
  }
  size_t total = header_len + (size_t)length;
  if (c->got < total) return 0;
  *status = atoi(c->buf + 9);
  memmove(c->buf, c->buf + total, c->got - total);
  c->got -= total;
  return 1;
}

static void on_readable(struct conn* c, int keep_going) {
  ssize_t n = recv(c->fd, c->buf + c->got, sizeof c->buf - 1 - c->got, 0);
  if (n <= 0) {
    if (n < 0 && errno == EINTR) return;
    /* closed while a request was out: count it, and carry on with a new connection */
    ++c->t->errors;
    conn_reopen(c);
    if (c->busy) {
      c->busy = 0;
      --in_flight;
      if (keep_going) conn_send(c);
    }
    return;
  }
  c->got += (size_t)n;
  int status;
  while (c->busy && answer_complete(c, &status)) {
    int64_t t = now_ns();
    c->busy = 0;
    --in_flight;
    if (counting) {
      int64_t us = (t - c->sent_ns) / 1000;
      c->t->hist[us < HIST_US ? us : HIST_US - 1]++;
      if (status == 200)
        ++c->t->answers;
      else
        ++c->t->errors;
      ++slice_answers;
    }
    if (keep_going) conn_send(c);
  }
}

static int64_t hist_percentile(const uint32_t* hist, uint64_t total, double p) {
  uint64_t rank = (uint64_t)(p / 100.0 * (double)total + 0.999999);
  if (rank == 0) rank = 1;
  uint64_t seen = 0;
  for (int i = 0; i < HIST_US; ++i) {
    seen += hist[i];
    if (seen >= rank) return i;
  }
  return HIST_US - 1;
}

static const char* body_path;

static int parse_target(const char* spec, struct target* t, char name) {
  t->name = name;
  t->port = atoi(spec);
  const char* slash = strchr(spec, '/');
  snprintf(t->path, sizeof t->path, "%s", slash ? slash : "/");
  t->hist = calloc(HIST_US, sizeof *t->hist);
  if (t->hist == NULL) die("calloc");
  return t->port > 0;
}

/* The bytes each request sends: a GET, or a POST of the --body file. */
static void build_request(struct target* t) {
  char head[512];
  char* body = NULL;
  size_t body_len = 0;
  if (body_path != NULL) {
    FILE* f = fopen(body_path, "rb");
    if (f == NULL) die(body_path);
    if (fseek(f, 0, SEEK_END) != 0) die("fseek");
    long size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) die("ftell");
    body_len = (size_t)size;
    body = malloc(body_len + 1);
    if (body == NULL || fread(body, 1, body_len, f) != body_len) die("read body");
    fclose(f);
  }
  size_t head_len =
      body_path == NULL
          ? (size_t)snprintf(head, sizeof head, "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: abload\r\n\r\n",
                             t->path, t->port)
          : (size_t)snprintf(head, sizeof head,
                             "POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: abload\r\n"
                             "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                             t->path, t->port, body_len);
  t->request = malloc(head_len + body_len);
  if (t->request == NULL) die("malloc");
  memcpy(t->request, head, head_len);
  if (body_len > 0) memcpy(t->request + head_len, body, body_len);
  t->request_len = head_len + body_len;
  free(body);
}

int main(int argc, char** argv) {
  struct target targets[2] = {{0}};
  int conns = 32, slice_ms = 250, have_a = 0, have_b = 0, cpu_pid = 0;
  double seconds = 20, warmup = 1;
  const char* json_path = NULL;
  for (int i = 1; i + 1 < argc; i += 2) {
    const char *a = argv[i], *v = argv[i + 1];
    if (strcmp(a, "--a") == 0)
      have_a = parse_target(v, &targets[0], 'A');
    else if (strcmp(a, "--b") == 0)
      have_b = parse_target(v, &targets[1], 'B');
    else if (strcmp(a, "--conns") == 0)
      conns = atoi(v);
    else if (strcmp(a, "--slice-ms") == 0)
      slice_ms = atoi(v);
    else if (strcmp(a, "--seconds") == 0)
      seconds = atof(v);
    else if (strcmp(a, "--warmup") == 0)
      warmup = atof(v);
    else if (strcmp(a, "--json") == 0)
      json_path = v;
    else if (strcmp(a, "--body") == 0)
      body_path = v;
    else if (strcmp(a, "--cpu-pid") == 0)
      cpu_pid = atoi(v);
    else {
      fprintf(stderr, "abload: unknown option %s\n", a);
      return 2;
    }
  }
  if (!have_a || !have_b || conns <= 0 || slice_ms <= 0 || (argc - 1) % 2 != 0 ||
      (cpu_pid != 0 && process_cpu_us(cpu_pid) < 0)) {
    fprintf(stderr,
            "usage: abload --a PORT[/path] --b PORT[/path] [--conns N] [--slice-ms MS] [--seconds S] "
            "[--warmup S] [--json FILE] [--body FILE] [--cpu-pid PID]\n");
    return 2;
  }
  build_request(&targets[0]);
  build_request(&targets[1]);

  epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) die("epoll_create1");
  struct conn* pool[2];
  for (int k = 0; k < 2; ++k) {
    pool[k] = calloc((size_t)conns, sizeof(struct conn));
    if (pool[k] == NULL) die("calloc");
    for (int i = 0; i < conns; ++i) {
      pool[k][i].t = &targets[k];
      conn_open(&pool[k][i]);
    }
  }

  size_t max_slices = (size_t)((seconds + warmup) * 1000 / slice_ms) + 8;
  struct slice {
    char t;
    uint64_t n;
    int64_t us;
    int64_t cpu_us;
  }* slices = calloc(max_slices, sizeof *slices);
  size_t n_slices = 0;
  static const int order[4] = {0, 1, 1, 0};
  int64_t start = now_ns();
  int64_t warm_end = start + (int64_t)(warmup * 1e9);
  int64_t end = warm_end + (int64_t)(seconds * 1e9);
  struct epoll_event events[256];
  for (int s = 0;; ++s) {
    int64_t slice_start = now_ns();
    /* whole ABBA groups only, so both targets get as many slices */
    if (s % 4 == 0) {
      if (slice_start >= end) break;
      counting = slice_start >= warm_end;
    }
    int k = order[s % 4];
    slice_answers = 0;
    int64_t cpu_start = cpu_pid != 0 ? process_cpu_us(cpu_pid) : 0;
    int64_t slice_end = slice_start + (int64_t)slice_ms * 1000000;
    for (int i = 0; i < conns; ++i)
      conn_send(&pool[k][i]);
    while (in_flight > 0) {
      int keep_going = now_ns() < slice_end;
      int n = epoll_wait(epfd, events, 256, 100);
      if (n < 0 && errno != EINTR) die("epoll_wait");
      keep_going = now_ns() < slice_end;
      for (int i = 0; i < n; ++i)
        on_readable(events[i].data.ptr, keep_going);
    }
    int64_t elapsed_us = (now_ns() - slice_start) / 1000;
    int64_t cpu_us = cpu_pid != 0 ? process_cpu_us(cpu_pid) - cpu_start : 0;
    if (counting && n_slices < max_slices) {
      slices[n_slices].t = targets[k].name;
      slices[n_slices].n = slice_answers;
      slices[n_slices].us = elapsed_us;
      slices[n_slices].cpu_us = cpu_us;
      ++n_slices;
    }
  }

  /* the JSON goes to a memory stream, then to stdout and the file */
  char* text = NULL;
  size_t text_len = 0;
  FILE* out = open_memstream(&text, &text_len);
  fprintf(out, "{\"slice_ms\":%d,\"conns\":%d,\"seconds\":%g,\"slices\":[", slice_ms, conns, seconds);
  for (size_t i = 0; i < n_slices; ++i) {
    fprintf(out, "%s{\"t\":\"%c\",\"n\":%llu,\"us\":%lld", i ? "," : "", slices[i].t, (unsigned long long)slices[i].n,
            (long long)slices[i].us);
    if (cpu_pid != 0) fprintf(out, ",\"cpu_us\":%lld", (long long)slices[i].cpu_us);
    fputc('}', out);
  }
  fprintf(out, "]");
  for (int k = 0; k < 2; ++k) {
    struct target* t = &targets[k];
    uint64_t total = 0;
    for (int i = 0; i < HIST_US; ++i)
      total += t->hist[i];
    fprintf(out,
            ",\"%c\":{\"port\":%d,\"path\":\"%s\",\"answers\":%llu,\"errors\":%llu,\"reconnects\":%llu,"
            "\"p50_us\":%lld,\"p90_us\":%lld,\"p99_us\":%lld,\"p999_us\":%lld}",
            t->name, t->port, t->path, (unsigned long long)t->answers, (unsigned long long)t->errors,
            (unsigned long long)t->reconnects, (long long)hist_percentile(t->hist, total, 50),
            (long long)hist_percentile(t->hist, total, 90), (long long)hist_percentile(t->hist, total, 99),
            (long long)hist_percentile(t->hist, total, 99.9));
  }
  fprintf(out, "}\n");
  fclose(out);
  fputs(text, stdout);
  if (json_path) {
    FILE* f = fopen(json_path, "w");
    if (f == NULL) die(json_path);
    fputs(text, f);
    fclose(f);
  }
  free(text);
  return 0;
}
