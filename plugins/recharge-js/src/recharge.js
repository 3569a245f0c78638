// `recharge` in JavaScript: the twin of plugins/recharge (same grants, writes and logs).
//
// The order is created with `custom = {"recharge_balance": 500}` (fen). When it is paid,
// `users/{user_id}.balance` grows by that much (the document is created if absent), in the
// same transaction that marks the order paid.

import { db, log, HandlerError } from './paynotify.js';

// Reads and checks the amount to credit.
function rechargeAmount(order) {
  const amount = order.custom.recharge_balance;
  if (!Number.isSafeInteger(amount)) {
    throw new HandlerError(
      'invalid-custom',
      `order ${order.out_trade_no}: recharge_balance must be an integer, got ${JSON.stringify(amount)}`,
    );
  }
  if (amount < 0) {
    throw new HandlerError(
      'invalid-custom',
      `order ${order.out_trade_no}: recharge_balance must not be negative, got ${amount}`,
    );
  }
  if (order.user_id === '') {
    throw new HandlerError('invalid-order', `order ${order.out_trade_no} has no user_id`);
  }
  return amount;
}

export async function handlePaid(order, notification) {
  const amount = rechargeAmount(order);
  const balance = db.collection('users').doc(order.user_id).inc('balance', amount);
  log.info(`credited ${amount} fen to user ${order.user_id}; balance now ${balance}`);
  return { balance };
}
