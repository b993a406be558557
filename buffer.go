package polymux

import "sync"

// maxChunk is the largest buffer chunk: one full frame of the default size.
const maxChunk = 64 << 10

// chunkSizes are the pooled chunk classes. Small writes and small frames
// take small chunks, so 10,000 idle or chatty streams cost little memory.
var chunkSizes = [...]int{1 << 10, 4 << 10, 16 << 10, maxChunk}

var chunkPools [len(chunkSizes)]sync.Pool

// chunk is a pooled piece of a byteQueue. Bytes [r:w] are readable and
// bytes [w:] are free for the producer.
type chunk struct {
	buf   []byte
	r, w  int
	next  *chunk
	class int
}

// keptChunks is how many free chunks of each class are kept out of the
// pools, which the garbage collector empties: a bulk transfer that
// allocated a fresh 64 KiB chunk after every collection would make
// garbage that brings the next collection sooner. What is kept is
// bounded: 32 chunks per class, 2.6 MiB in all.
const keptChunks = 32

// chunkStacks hold the kept free chunks of each class.
var chunkStacks [len(chunkSizes)]freeList[*chunk]

func init() {
	for i := range chunkStacks {
		chunkStacks[i].max = keptChunks
	}
}

// getChunk returns an empty chunk of the smallest class holding size bytes
// (the largest class for bigger sizes).
func getChunk(size int) *chunk {
	class := len(chunkSizes) - 1
	for i, n := range chunkSizes {
		if size <= n {
			class = i
			break
		}
	}
	if c, ok := chunkStacks[class].pop(); ok {
		return c
	}
	if c, ok := chunkPools[class].Get().(*chunk); ok {
		return c
	}
	return &chunk{buf: make([]byte, chunkSizes[class]), class: class}
}

func putChunk(c *chunk) {
	c.r, c.w, c.next = 0, 0, nil
	if !chunkStacks[c.class].push(c) {
		chunkPools[c.class].Put(c)
	}
}

// byteQueue is a FIFO of bytes in pooled chunks. It is not synchronised:
// its owner's mutex guards it. A queue holds no chunk while it is empty,
// so an idle stream costs only the queue's three words.
type byteQueue struct {
	head, tail *chunk
	n          int // readable bytes
}

// len is the number of readable bytes.
func (q *byteQueue) len() int { return q.n }

// space returns up to n free bytes at the tail, adding a chunk sized for n
// when the tail has too little room to be worth a read.
func (q *byteQueue) space(n int) []byte {
	if t := q.tail; t != nil {
		if free := len(t.buf) - t.w; free >= n || free >= 512 {
			return t.buf[t.w:min(len(t.buf), t.w+n)]
		}
	}
	c := getChunk(n)
	if q.tail == nil {
		q.head = c
	} else {
		q.tail.next = c
	}
	q.tail = c
	return c.buf[:min(len(c.buf), n)]
}

// commit makes k bytes written into the slice from space readable.
func (q *byteQueue) commit(k int) {
	q.tail.w += k
	q.n += k
}

// write copies all of p into the queue.
func (q *byteQueue) write(p []byte) {
	for len(p) > 0 {
		k := copy(q.space(len(p)), p)
		q.commit(k)
		p = p[k:]
	}
}

// read copies readable bytes into p and drops them from the queue.
func (q *byteQueue) read(p []byte) int {
	n := 0
	for n < len(p) && q.n > 0 {
		c := q.head
		k := copy(p[n:], c.buf[c.r:c.w])
		c.r += k
		n += k
		q.n -= k
		q.release()
	}
	return n
}

// discard drops the first k readable bytes.
func (q *byteQueue) discard(k int) {
	for k > 0 {
		c := q.head
		d := min(k, c.w-c.r)
		c.r += d
		q.n -= d
		k -= d
		q.release()
	}
}

// discardKeep is discard that keeps a consumed tail chunk with room for
// more, for a producer about to write again: a Write blocked on the
// window refills the same chunk rather than cycling one through the pool
// for every grant.
func (q *byteQueue) discardKeep(k int) {
	for k > 0 {
		c := q.head
		d := min(k, c.w-c.r)
		c.r += d
		q.n -= d
		k -= d
		if c != q.tail || c.w == len(c.buf) {
			q.release()
		}
	}
}

// push appends a chunk that was filled apart (without the owner's lock).
func (q *byteQueue) push(c *chunk) {
	if c.w == c.r {
		putChunk(c)
		return
	}
	if q.tail == nil {
		q.head = c
	} else {
		q.tail.next = c
	}
	q.tail = c
	q.n += c.w - c.r
}

// splice moves every chunk of o to the end of q, leaving o empty.
func (q *byteQueue) splice(o *byteQueue) {
	if o.head == nil {
		return
	}
	if q.tail == nil {
		q.head = o.head
	} else {
		q.tail.next = o.head
	}
	q.tail = o.tail
	q.n += o.n
	*o = byteQueue{}
}

// release frees the head chunk once it is consumed.
func (q *byteQueue) release() {
	c := q.head
	if c == nil || c.r < c.w {
		return
	}
	q.head = c.next
	if q.head == nil {
		q.tail = nil
	}
	putChunk(c)
}

// slices appends to bufs the readable bytes [off, off+k) as chunk slices.
func (q *byteQueue) slices(off, k int, bufs [][]byte) [][]byte {
	for c := q.head; c != nil && k > 0; c = c.next {
		avail := c.w - c.r
		if off >= avail {
			off -= avail
			continue
		}
		b := c.buf[c.r+off : c.w]
		off = 0
		if len(b) > k {
			b = b[:k]
		}
		bufs = append(bufs, b)
		k -= len(b)
	}
	return bufs
}

// freeList keeps up to max free things between uses, safe for concurrent
// use. Unlike a sync.Pool, the garbage collector never empties it (and the
// race detector never drops what is put back); what it keeps is bounded.
type freeList[T any] struct {
	max  int
	mu   sync.Mutex // guards free
	free []T
}

// pop takes a kept thing, if there is one.
func (l *freeList[T]) pop() (v T, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(l.free)
	if n == 0 {
		return v, false
	}
	v = l.free[n-1]
	var zero T
	l.free[n-1] = zero
	l.free = l.free[:n-1]
	return v, true
}

// push keeps v, unless max things are kept already.
func (l *freeList[T]) push(v T) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.free) >= l.max {
		return false
	}
	l.free = append(l.free, v)
	return true
}

// bufferStack lends large buffers (read buffers, header arenas) to the
// sessions whose frames are flowing, and keeps up to max of them between
// loans (a freeList), so sessions that go quiet and busy again reuse the
// same few rather than allocating.
type bufferStack struct {
	size int
	freeList[*[]byte]
}

// get returns a buffer of length size.
func (b *bufferStack) get() *[]byte {
	if p, ok := b.pop(); ok {
		return p
	}
	p := make([]byte, b.size)
	return &p
}

// put gives a buffer from get back.
func (b *bufferStack) put(p *[]byte) { b.push(p) }

// newBufferStack returns a bufferStack of buffers of size bytes, keeping
// up to max.
func newBufferStack(size, max int) *bufferStack {
	return &bufferStack{size: size, freeList: freeList[*[]byte]{max: max}}
}
