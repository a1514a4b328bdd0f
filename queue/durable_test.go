package queue_test

import (
	"context"
	"errors"
	"fmt"
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

// replyError is an error reply of Redis's (a redis.Error).
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

// failConfigGet fails every CONFIG GET with err.
type failConfigGet struct{ err error }

func (h failConfigGet) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h failConfigGet) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h failConfigGet) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if a := cmd.Args(); len(a) > 1 && strings.EqualFold(fmt.Sprint(a[0]), "config") && strings.EqualFold(fmt.Sprint(a[1]), "get") {
			cmd.SetErr(h.err)
			return h.err
		}
		return next(ctx, cmd)
	}
}

// TestCheckDurabilityConfigGetFails: a Redis that refuses CONFIG GET (a
// managed service that renamed it) cannot be checked, which is a warning,
// and under strict not durable; a CONFIG GET that timed out (a Redis slow
// for a moment) is a check that failed, which says nothing of the
// configuration, and is not taken for a Redis found not durable.
func TestCheckDurabilityConfigGetFails(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()

	renamed := srv.Client(t)
	renamed.AddHook(failConfigGet{replyError("ERR unknown command 'CONFIG', with args beginning with: 'GET' 'appendonly'")})
	w, err := queue.CheckDurability(ctx, renamed, true)
	if !errors.Is(err, queue.ErrNotDurable) || len(w) != 3 || !strings.Contains(w[0], "cannot read appendonly") {
		t.Errorf("CONFIG refused, strict: warnings %q, err %v; want 3 warnings and ErrNotDurable", w, err)
	}

	slow := srv.Client(t)
	slow.AddHook(failConfigGet{context.DeadlineExceeded})
	w, err = queue.CheckDurability(ctx, slow, true)
	if err == nil || errors.Is(err, queue.ErrNotDurable) || len(w) != 0 {
		t.Errorf("CONFIG GET timed out, strict: warnings %q, err %v; want a failed check, no warning, not ErrNotDurable", w, err)
	}
}
