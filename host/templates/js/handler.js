// `{{name}}`: the paynotify handler for orders of type `{{name}}`.
//
// When such an order is paid, this adds `custom.points` to `users/{user_id}.points`,
// records the order in `{{collection}}`, and queues a `notify-user` task that runs after
// the payment commits. Replace it with your own logic.

import { db, log, tasks, HandlerError } from './paynotify.js';

// Runs inside the payment transaction: every write below commits with the payment or not
// at all. Throw only when a retry can help or the order is malformed.
export async function handlePaid(order, notification) {
  const points = order.custom.points ?? 0;
  if (!Number.isSafeInteger(points)) {
    throw new HandlerError('invalid-custom', `order ${order.out_trade_no}: points must be an integer`);
  }
  if (order.user_id === '') {
    throw new HandlerError('invalid-order', `order ${order.out_trade_no} has no user_id`);
  }
  const total = db.collection('users').doc(order.user_id).inc('points', points);
  db.collection('{{collection}}').doc(order.out_trade_no).set({
    user_id: order.user_id,
    total_fee: order.total_fee,
    transaction_id: notification.transaction_id,
  });
  // Side effects outside the database go in a task: it exists only if the payment commits,
  // and is retried until runTask returns without throwing.
  tasks.enqueue('notify-user', { user_id: order.user_id, out_trade_no: order.out_trade_no });
  log.info(`order ${order.out_trade_no} paid: user ${order.user_id} now has ${total} points`);
  return { points: total };
}

export async function runTask(task) {
  if (task.name !== 'notify-user') {
    throw new HandlerError('unknown-task', `unknown task ${task.name}`);
  }
  const { user_id, out_trade_no } = task.payload;
  // A real handler would call the merchant's backend here with `http.request`.
  log.info(`would notify ${user_id} about ${out_trade_no}`);
}
