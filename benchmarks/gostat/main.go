// gostat: unary-call latency over a unix socket as a Go gRPC client sees it.
//
// containerd talks to cimsnap with grpc-go, whose per-call cost is far below Python's, so
// this client measures the server the way containerd experiences it. Requests are
// hand-encoded protobuf bytes passed through a raw codec: no generated stubs are needed,
// only grpc-go (Debian: golang-google-grpc-dev, built with GO111MODULE=off).
//
// Usage: gostat SOCKET CALLS stat KEY | gostat SOCKET CALLS health
// Prints {"p50": ms, "p99": ms}.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
)

// rawCodec sends and receives already-encoded message bytes.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// stringField encodes a length-delimited protobuf field.
func stringField(number int, value string) []byte {
	out := []byte{byte(number<<3 | 2)}
	n := len(value)
	for n >= 0x80 {
		out = append(out, byte(n)|0x80)
		n >>= 7
	}
	return append(append(out, byte(n)), value...)
}

func main() {
	if len(os.Args) < 4 {
		fmt.Fprintln(os.Stderr, "usage: gostat SOCKET CALLS stat KEY | gostat SOCKET CALLS health")
		os.Exit(2)
	}
	socket, what := os.Args[1], os.Args[3]
	calls, err := strconv.Atoi(os.Args[2])
	if err != nil || calls < 1 {
		fmt.Fprintln(os.Stderr, "gostat: CALLS must be a positive number")
		os.Exit(2)
	}
	var method string
	var request []byte
	switch {
	case what == "stat" && len(os.Args) == 5:
		method = "/containerd.services.snapshots.v1.Snapshots/Stat"
		request = append(stringField(1, "cimsnap"), stringField(2, os.Args[4])...)
	case what == "health":
		method = "/grpc.health.v1.Health/Check"
	default:
		fmt.Fprintln(os.Stderr, "gostat: expected 'stat KEY' or 'health'")
		os.Exit(2)
	}
	encoding.RegisterCodec(rawCodec{})
	conn, err := grpc.Dial(socket, grpc.WithInsecure(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}))
	if err != nil {
		fmt.Fprintln(os.Stderr, "gostat:", err)
		os.Exit(1)
	}
	defer conn.Close()
	call := func() {
		var response []byte
		if err := conn.Invoke(context.Background(), method, &request, &response); err != nil {
			fmt.Fprintln(os.Stderr, "gostat:", err)
			os.Exit(1)
		}
	}
	for i := 0; i < 200; i++ { // warm up the connection and both processes
		call()
	}
	samples := make([]float64, calls)
	for i := range samples {
		start := time.Now()
		call()
		samples[i] = float64(time.Since(start).Nanoseconds()) / 1e6
	}
	sort.Float64s(samples)
	out, _ := json.Marshal(map[string]float64{
		"p50": samples[calls/2],
		"p99": samples[calls*99/100],
	})
	fmt.Println(string(out))
}
