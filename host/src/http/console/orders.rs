//! The console's orders: the list (`/console/orders`) and one order with its
//! notifications, tasks, refunds and handler writes (`writes.rs`); its Refund and Close
//! forms are `payments.rs`.

use axum::extract::{Path, State};
use axum::response::Html;
use maud::{html, Markup};
use serde::Deserialize;

use super::format::{pretty_json, text_opt, time, time_opt, yuan};
use super::notifications::notifications_table;
use super::tasks::tasks_table;
use super::widgets::{
    choice, given, handler_badge, order_link, page_size, paged, status_badge, Paged,
};
use super::{page, Nav, PageError, PageQuery, Session};
use crate::app::App;
use crate::store::{
    status, NotificationFilter, NotificationRecord, Order, OrderCursor, OrderFilter, TaskRecord,
};
use crate::store::{Keyset, TaskFilter};

/// Where the list is.
const PATH: &str = "/console/orders";

/// Most notifications, and most tasks, shown on an order's page.
const HISTORY: u32 = 100;

/// Most handler writes shown on an order's page (the API and the CLI page through all).
const WRITES: u32 = 200;

/// Query of `/console/orders`.
#[derive(Debug, Deserialize, Default)]
pub struct OrdersQuery {
    status: Option<String>,
    #[serde(rename = "type")]
    order_type: Option<String>,
    user: Option<String>,
    older: Option<String>,
    newer: Option<String>,
    limit: Option<u32>,
}

impl OrdersQuery {
    /// The page of orders asked for; 400 for a status or cursor that does not parse.
    async fn read(&self, app: &App) -> Result<Paged<Order>, PageError> {
        let (filter, keyset) = self.filter()?;
        let rows = app.store.console().page_orders(&filter, &keyset).await?;
        Ok(paged(rows, &keyset, page_size(self.limit)))
    }

    /// The store's filter (one row more than the page shows) and the page asked for.
    fn filter(&self) -> Result<(OrderFilter, Keyset<OrderCursor>), PageError> {
        let status = given(&self.status)
            .map(|s| {
                status::parse(s)
                    .ok_or_else(|| PageError::bad_request(format!("Unknown status `{s}`.")))
            })
            .transpose()?;
        let cursor = |c: &Option<String>| {
            given(c)
                .map(OrderCursor::parse)
                .transpose()
                .map_err(PageError::bad_request)
        };
        // An older cursor wins; a newer one is read only without it.
        let keyset = match cursor(&self.older)? {
            Some(c) => Keyset::Older(c),
            None => cursor(&self.newer)?.map_or(Keyset::Newest, Keyset::Newer),
        };
        let filter = OrderFilter {
            status,
            order_type: given(&self.order_type).map(str::to_owned),
            user_id: given(&self.user).map(str::to_owned),
            before: None,
            limit: page_size(self.limit) + 1,
        };
        Ok((filter, keyset))
    }
}

/// `GET /console/orders`: newest first, filtered by status / type / user.
pub async fn list(
    State(app): State<App>,
    session: Session,
    PageQuery(q): PageQuery<OrdersQuery>,
) -> Result<Html<String>, PageError> {
    let orders = q.read(&app).await?;
    let types: Vec<String> = app
        .plugins
        .status()
        .into_iter()
        .map(|s| s.plugin_type)
        .collect();
    Ok(page(
        "Orders",
        Nav::Orders,
        &session,
        list_body(&q, &types, &orders),
    ))
}

/// The filter form (with the handler types for the type field), the orders and the pager.
fn list_body(q: &OrdersQuery, types: &[String], p: &Paged<Order>) -> Markup {
    // Valid: the page was read with it.
    let status_code = given(&q.status).and_then(status::parse);
    let filters = [
        ("status", given(&q.status)),
        ("type", given(&q.order_type)),
        ("user", given(&q.user)),
    ];
    html! {
        form.filters method="get" action=(PATH) {
            (choice("Status", "status", status::ALL.map(|(_, name)| name), status_code.map(status::name)))
            label { "Type "
                input name="type" list="order-types" value=(given(&q.order_type).unwrap_or("")) size="12";
                datalist id="order-types" { @for t in types { option value=(t) {} } }
            }
            label { "User " input name="user" value=(given(&q.user).unwrap_or("")) size="14"; }
            button type="submit" { "Filter" }
            " " a href=(PATH) { "clear" }
        }
        (orders_table(&p.rows))
        (p.pager(PATH, &filters, q.limit, |o| OrderCursor::after(o).to_string()))
    }
}

/// The orders, one a row, each linking to its page.
fn orders_table(rows: &[Order]) -> Markup {
    html! {
        @if rows.is_empty() {
            p.empty { "No orders." }
        } @else {
            table #orders {
                thead { tr {
                    th { "Order" } th { "Type" } th { "User" } th.num { "Amount" } th { "Status" }
                    th { "Handler" } th { "Provider" } th { "Created" } th { "Paid" }
                } }
                tbody {
                    @for o in rows {
                        tr data-order=(o.out_trade_no) {
                            td { (order_link(Some(&o.out_trade_no))) }
                            td { (o.order_type) }
                            td { (o.user_id) }
                            td.num { (yuan(o.total_fee)) }
                            td { (status_badge(o.status)) }
                            td { (handler_badge(&o.handler_status)) }
                            td { (o.provider) "/" (o.account) }
                            td { (time(o.created_at)) }
                            td { (time_opt(o.pay_date)) }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /console/orders/{out_trade_no}`: the order, its notifications and its tasks.
/// Query of an order's page: set after a Refund or Close from it.
#[derive(Debug, Deserialize, Default)]
pub struct OrderQuery {
    /// The refund number just started.
    refund: Option<String>,
    /// Set after the order was closed.
    closed: Option<String>,
}

/// `GET /console/orders/{no}`: one order; after a Refund or Close, what came of it.
pub async fn show(
    State(app): State<App>,
    session: Session,
    Path(no): Path<String>,
    query: Result<axum::extract::Query<OrderQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Html<String>, PageError> {
    let q = query.map(|axum::extract::Query(q)| q).unwrap_or_default();
    let order = app
        .store
        .get_order(&no)
        .await?
        .ok_or_else(|| PageError::not_found(format!("No order `{no}`.")))?;
    let history = app
        .store
        .list_notifications(&NotificationFilter {
            out_trade_no: Some(no.clone()),
            limit: HISTORY,
            ..Default::default()
        })
        .await?;
    let tasks = app
        .store
        .console()
        .page_tasks(
            &TaskFilter {
                out_trade_no: Some(no.clone()),
                limit: HISTORY,
                ..Default::default()
            },
            &Keyset::Newest,
        )
        .await?;
    let requests = app.store.payments().refund_requests(&no).await?;
    // One more than shown, to know whether there are more.
    let mut writes = app
        .store
        .audit()
        .order_writes(&no, None, WRITES + 1)
        .await?;
    let more = writes.len() > WRITES as usize;
    writes.truncate(WRITES as usize);
    let notice = match (&q.refund, &q.closed) {
        (Some(r), _) => requests.iter().find(|x| &x.out_refund_no == r).map(|x| {
            html! { p.notice role="status" id="action-result" {
                "Refund " (x.out_refund_no) ": " (x.state)
                @if let Some(e) = &x.error { " — " (e) }
            } }
        }),
        (None, Some(_)) => Some(html! { p.notice role="status" id="action-result" {
            "Order closed: " (status_badge(order.status))
        } }),
        (None, None) => None,
    };
    let body = html! {
        @if let Some(n) = notice { (n) }
        (order_body(&order, &history, &tasks, &session))
        (super::writes::section(&writes, more))
        (super::payments::actions(&order, &requests, &session))
    };
    Ok(page(&format!("Order {no}"), Nav::Orders, &session, body))
}

/// The order's fields, handler result, custom data, notifications and tasks.
fn order_body(
    o: &Order,
    history: &[NotificationRecord],
    tasks: &[TaskRecord],
    session: &Session,
) -> Markup {
    html! {
        table.fields #order {
            tr { th { "Order" } td #out-trade-no { (o.out_trade_no) } }
            tr { th { "Type" } td { (o.order_type) } }
            tr { th { "Amount" } td #amount { (yuan(o.total_fee)) } }
            tr { th { "User" } td { (o.user_id) } }
            tr { th { "Provider / account" } td { (o.provider) " / " (o.account) } }
            @if let Some(sub) = &o.sub_mchid {
                tr { th { "Sub-merchant" } td #sub-mchid { (sub) } }
            }
            tr { th { "Status" } td #status { (status_badge(o.status)) } }
            tr { th { "Transaction" } td { (text_opt(o.transaction_id.as_deref())) } }
            tr { th { "Paid (provider)" } td { (time_opt(o.pay_date)) } }
            tr { th { "Notified" } td { (time_opt(o.notify_date)) } }
            tr { th { "Created" } td { (time(o.created_at)) } }
            tr { th { "Updated" } td { (time(o.updated_at)) } }
            tr { th { "Handler status" } td #handler-status { (handler_badge(&o.handler_status)) } }
            tr { th { "Handler build" } td { (text_opt(o.handler_version.as_deref())) } }
            tr { th { "Paid by notification" } td {
                @if let Some(id) = o.paid_notification_id {
                    a href={"/console/notifications/" (id)} { "#" (id) }
                } @else { span.muted { "—" } }
            } }
        }
        h2 { "Handler result" }
        @if let Some(r) = &o.handler_result { pre #handler-result { (pretty_json(r)) } }
        @else { p.muted { "None yet." } }
        h2 { "Custom" }
        pre { (pretty_json(&o.custom)) }
        @if let Some(d) = &o.original_data {
            details { summary { "Verified notification fields (original_data)" } pre { (pretty_json(d)) } }
        }
        h2 { "Notifications" }
        (notifications_table(history, session))
        h2 { "Tasks" }
        (tasks_table(tasks, session))
    }
}
