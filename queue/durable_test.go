package queue_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

// TestCheckDurabilityAppendfsyncNo: with appendfsync no, the kernel
// decides when the AOF reaches the disk; that is not durable.
func TestCheckDurabilityAppendfsyncNo(t *testing.T) {
	srv := redistest.Start(t, redistest.WithArgs("--appendfsync", "no"))
	rdb := srv.Client(t)
	ctx := context.Background()
	warnings, err := queue.CheckDurability(ctx, rdb, false)
	if err != nil || len(warnings) != 1 || !strings.Contains(warnings[0], "appendfsync") {
		t.Fatalf("not strict: warnings %q, err %v; want one appendfsync warning", warnings, err)
	}
	if _, err := queue.CheckDurability(ctx, rdb, true); !errors.Is(err, queue.ErrNotDurable) {
		t.Fatalf("strict: err %v, want ErrNotDurable", err)
	}
	if err := rdb.ConfigSet(ctx, "appendfsync", "everysec").Err(); err != nil {
		t.Fatal(err)
	}
	if w, err := queue.CheckDurability(ctx, rdb, true); err != nil || len(w) != 0 {
		t.Fatalf("after appendfsync everysec: %q, %v", w, err)
	}
}

// TestEnqueueWaitsForReplicas: with MinReplicas, Enqueue returns only once
// a real replica has the message, and fails when the replica is gone.
func TestEnqueueWaitsForReplicas(t *testing.T) {
	primary := redistest.Start(t)
	port := strings.TrimPrefix(primary.Addr(), "127.0.0.1:")
	replica := redistest.Start(t, redistest.WithArgs("--replicaof", "127.0.0.1", port))
	rc := replica.Client(t)
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, _ := rc.Info(ctx, "replication").Result()
		if strings.Contains(info, "master_link_status:up") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replica did not connect:\n%s", info)
		}
		time.Sleep(50 * time.Millisecond)
	}

	q := queue.New(primary.Client(t), queue.Options{MinReplicas: 1, ReplicasTimeout: 500 * time.Millisecond})
	sub := queue.Submission{Route: "r", App: "a", From: "a@x.example", To: []string{"b@y.example"}, Body: []byte("Subject: x\r\n\r\nhi\r\n")}
	id, _, err := q.Enqueue(ctx, sub)
	if err != nil {
		t.Fatalf("enqueue with a replica: %v", err)
	}
	// Acknowledged means the replica has it already, without waiting.
	n, err := rc.Exists(ctx, msgKeyOf(t, primary.Client(t), id)).Result()
	if err != nil || n != 1 {
		t.Fatalf("the replica lacks %s right after the acknowledgement (%d, %v)", id, n, err)
	}

	replica.Kill(t)
	start := time.Now()
	_, _, err = q.Enqueue(ctx, sub)
	if !errors.Is(err, queue.ErrNotReplicated) {
		t.Fatalf("enqueue without a replica: %v, want ErrNotReplicated", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("the refusal took %v; want about the 500ms replicas timeout", took)
	}
	// A store refused for its route's bound wrote nothing: it is refused
	// for that, not for the replica it lacks.
	capped := queue.New(primary.Client(t), queue.Options{MinReplicas: 1, ReplicasTimeout: 500 * time.Millisecond, MaxPerRoute: 1})
	if _, _, err := capped.Enqueue(ctx, sub); !errors.Is(err, queue.ErrRouteFull) {
		t.Fatalf("enqueue on a full route without a replica: %v, want ErrRouteFull", err)
	}
}

// msgKeyOf finds the key of message id on the primary.
func msgKeyOf(t *testing.T, rdb *redis.Client, id string) string {
	t.Helper()
	keys, err := rdb.Keys(context.Background(), "*"+id).Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("key of %s: %q %v", id, keys, err)
	}
	return keys[0]
}
