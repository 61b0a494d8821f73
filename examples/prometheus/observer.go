package main

import (
	"context"
	"encoding/json"
	"mime"
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/tapproxy/tapproxy"
)

// ordersObserver turns response payloads into a domain metric: it parses
// each successful JSON response and counts the orders in it by status. The
// service behind the proxy knows nothing of this metric.
type ordersObserver struct {
	orders metric.Int64Counter
	// byStatus holds the attribute options for the statuses worth a
	// series of their own; any other value is counted as "other", so that
	// a payload cannot create series without bound.
	byStatus map[string]metric.AddOption
	other    metric.AddOption
}

var _ tapproxy.ResponseObserver = (*ordersObserver)(nil)

func newOrdersObserver(mp metric.MeterProvider) (*ordersObserver, error) {
	orders, err := mp.Meter("github.com/tapproxy/tapproxy/examples/prometheus").Int64Counter("shop.orders",
		metric.WithDescription("Orders seen in the bodies of successful responses, by status."),
		metric.WithUnit("{order}"))
	if err != nil {
		return nil, err
	}
	o := &ordersObserver{orders: orders, byStatus: map[string]metric.AddOption{}}
	for _, s := range []string{"paid", "pending", "shipped", "cancelled"} {
		o.byStatus[s] = metric.WithAttributeSet(attribute.NewSet(attribute.String("order.status", s)))
	}
	o.other = metric.WithAttributeSet(attribute.NewSet(attribute.String("order.status", "other")))
	return o, nil
}

type order struct {
	ID     string `json:"id"`
	Status string `json:"status"`
}

// ObserveResponse counts the orders in a JSON body: one order, or a list.
func (o *ordersObserver) ObserveResponse(ctx context.Context, ex *tapproxy.Exchange) {
	if ex.Err != nil || ex.Response.StatusCode != http.StatusOK || ex.Truncated {
		return // only whole bodies of successful responses
	}
	if mt, _, _ := mime.ParseMediaType(ex.Response.Header.Get("Content-Type")); mt != "application/json" {
		return
	}
	var raw json.RawMessage
	if json.NewDecoder(ex.Body()).Decode(&raw) != nil || len(raw) == 0 {
		return
	}
	var orders []order
	if raw[0] == '[' {
		if json.Unmarshal(raw, &orders) != nil {
			return
		}
	} else {
		var one order
		if json.Unmarshal(raw, &one) != nil {
			return
		}
		orders = append(orders, one)
	}
	for _, ord := range orders {
		if ord.ID == "" {
			continue // not an order
		}
		opt, ok := o.byStatus[ord.Status]
		if !ok {
			opt = o.other
		}
		o.orders.Add(ctx, 1, opt)
	}
}
