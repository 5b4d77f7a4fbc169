/* Count the large allocations of a Python process by the Python line that made them.

   An LD_PRELOAD shim (issue 16, receiver RSS; docs/JOURNAL.md 2026-12-06 "receive
   buffers reused"): every malloc, calloc or realloc of 64 KiB or more is counted under
   the file:line of the innermost Python frame of the thread that holds the GIL ("<no
   gil>" otherwise), and the table is written to $BIGALLOC_DIR/<pid>.lines (count,
   bytes, where) every 128 such allocations and at exit. Daemons started by the
   benchmark inherit the environment:

     gcc -O2 -shared -fPIC -o /tmp/malloc_lines.so benchmarks/malloc_lines.c -ldl
     mkdir /tmp/ml && BIGALLOC_DIR=/tmp/ml LD_PRELOAD=/tmp/malloc_lines.so \
         python -m benchmarks.bench_daemon --rss --quick
     sort -rn /tmp/ml/<receiver pid>.lines | head     # node1 is the later pid
*/
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
#define BIG (64*1024)
typedef struct { char where[160]; unsigned long n, bytes; } ent;
static ent tab[512]; static int ntab;
static __thread int busy;
static int (*gil_check)(void); static void *(*get_frame)(void); static void *(*frame_code)(void*);
static int (*frame_line)(void*); static const char *(*as_utf8)(void*);
static void (*decref_fn)(void*);
static int inited;
static void init(void) {
  inited = 1;
  gil_check = dlsym(RTLD_DEFAULT, "PyGILState_Check");
  get_frame = dlsym(RTLD_DEFAULT, "PyEval_GetFrame");
  frame_code = dlsym(RTLD_DEFAULT, "PyFrame_GetCode");
  frame_line = dlsym(RTLD_DEFAULT, "PyFrame_GetLineNumber");
  as_utf8 = dlsym(RTLD_DEFAULT, "PyUnicode_AsUTF8");
  decref_fn = dlsym(RTLD_DEFAULT, "Py_DecRef");
}
static void dump(void) {
  const char *d = getenv("BIGALLOC_DIR"); if (!d) return;
  char p[512]; snprintf(p, sizeof p, "%s/%d.lines", d, getpid());
  FILE *f = fopen(p, "w"); if (!f) return;
  for (int i = 0; i < ntab; i++) fprintf(f, "%lu %lu %s\n", tab[i].n, tab[i].bytes, tab[i].where);
  fclose(f);
}
static unsigned long total;
static void note(size_t n, const char *kind) {
  if (n < BIG || busy) return;
  busy = 1;
  if (!inited) init();
  char where[160] = "?";
  if (gil_check && get_frame && gil_check()) {
    void *fr = get_frame();
    if (fr && frame_code && frame_line && as_utf8) {
      void *co = frame_code(fr);
      static void *(*getattr)(void*, const char*);
      if (!getattr) getattr = dlsym(RTLD_DEFAULT, "PyObject_GetAttrString");
      void *fn = getattr(co, "co_filename");
      const char *s = fn ? as_utf8(fn) : "?";
      const char *t = s; const char *q = strrchr(s, '/'); if (q) { const char *r = q; while (r > s && r[-1] != '/') r--; t = r > s ? r : s; }
      snprintf(where, sizeof where, "%s %s:%d", kind, t, frame_line(fr));
      if (fn) decref_fn(fn);
      decref_fn(co);
    }
  } else snprintf(where, sizeof where, "%s <no gil>", kind);
  int i; for (i = 0; i < ntab; i++) if (!strcmp(tab[i].where, where)) break;
  if (i == ntab && ntab < 512) { strcpy(tab[ntab].where, where); ntab++; }
  if (i < 512) { tab[i].n++; tab[i].bytes += n; }
  if ((++total & 127) == 0) dump();
  busy = 0;
}
void *malloc(size_t n) { note(n, "malloc"); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { note(a*b, "calloc"); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { note(n, "realloc"); return __libc_realloc(p, n); }
__attribute__((destructor)) static void fin(void) { dump(); }
