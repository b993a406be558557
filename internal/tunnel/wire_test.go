package tunnel

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestMessagesRoundTripAndLeaveWhatFollows(t *testing.T) {
	var buf bytes.Buffer
	in := &message{Type: msgConnect, Target: "example.com:443", Nonce: []byte{1, 2, 3}}
	if err := writeMessage(&buf, in); err != nil {
		t.Fatal(err)
	}
	buf.WriteString("payload")
	out, err := expect(&buf, msgConnect)
	if err != nil || out.Target != in.Target || !bytes.Equal(out.Nonce, in.Nonce) {
		t.Fatalf("read %+v, %v", out, err)
	}
	if rest := buf.String(); rest != "payload" {
		t.Errorf("after the message: %q, want the payload untouched", rest)
	}
}

func TestReadMessageRefusesMalformedInput(t *testing.T) {
	for name, in := range map[string]string{
		"empty":        "",
		"short header": "\x00",
		"short body":   "\x00\x10{}",
		"not json":     "\x00\x03abc",
		"no type":      "\x00\x02{}",
	} {
		if m, err := readMessage(strings.NewReader(in)); err == nil {
			t.Errorf("%s: read %+v", name, m)
		}
	}
	if _, err := readMessage(strings.NewReader("\x00\x02{}")); !errors.Is(err, errBadMessage) {
		t.Errorf("no type: %v, want errBadMessage", err)
	}
	if _, err := readMessage(strings.NewReader("\x00\x05{}")); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated: %v, want io.ErrUnexpectedEOF", err)
	}
	if _, err := expect(strings.NewReader("\x00\x0f{\"type\":\"pong\"}"), msgReply); !errors.Is(err, errBadMessage) {
		t.Errorf("unexpected type: %v", err)
	}
}

func TestWriteMessageRefusesOversizeMessages(t *testing.T) {
	err := writeMessage(io.Discard, &message{Type: msgReply, Error: strings.Repeat("x", maxMessage)})
	if err == nil {
		t.Error("an oversize message was written")
	}
}
