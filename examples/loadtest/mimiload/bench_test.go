package main

import (
	"errors"
	"net/http"
	"testing"
)

func TestShapeOf(t *testing.T) {
	moh := http.Header{"Content-Type": {"application/octet-stream"}, "Cache-Control": {"no-store"}}
	tests := []struct {
		name string
		a    answer
		want answerShape
	}{
		{"a MoH answer", answer{status: 200, body: []byte{0, 1, 9, 0, 0}, header: moh},
			answerShape{status: 200, length: 5, contentType: "application/octet-stream", cacheControl: "no-store"}},
		{"no headers", answer{status: 404, body: []byte("x")}, answerShape{status: 404, length: 1}},
		{"failed", answer{status: 200, body: []byte("x"), header: moh, err: errors.New("reset")}, answerShape{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := shapeOf(tc.a); got != tc.want {
				t.Errorf("shapeOf = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestCPURatio(t *testing.T) {
	tests := []struct {
		name       string
		base, mode result
		want       float64
	}{
		{"both known", result{ServerCPU: 60, ClientCPU: 40}, result{ServerCPU: 150, ClientCPU: 50}, 0.5},
		{"rounded", result{ServerCPU: 1, ClientCPU: 1}, result{ServerCPU: 2, ClientCPU: 1}, 0.667},
		{"base server unknown", result{ClientCPU: 40}, result{ServerCPU: 150, ClientCPU: 50}, 0},
		{"mode client unknown", result{ServerCPU: 60, ClientCPU: 40}, result{ServerCPU: 150}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := cpuRatio(&tc.base, &tc.mode); got != tc.want {
				t.Errorf("cpuRatio = %v, want %v", got, tc.want)
			}
		})
	}
}
